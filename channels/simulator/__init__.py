"""A reusable base for the channel simulators (SIMULATORS.md): HTTP serving, faults, clock, notifier."""

from __future__ import annotations

from .core import BadRequest, BillAdjustment, ChannelSimulator, Request, Response, run_forever
from .faults import Clock, Fault, FaultBook
from .notifier import Notification, Notifier, rfc3339

__all__ = [
    "BadRequest",
    "BillAdjustment",
    "ChannelSimulator",
    "Clock",
    "Fault",
    "FaultBook",
    "Notification",
    "Notifier",
    "Request",
    "Response",
    "rfc3339",
    "run_forever",
]
