"""A reusable base for the channel simulators (SIMULATORS.md): HTTP serving, faults, clock, notifier."""

from __future__ import annotations

from .core import BadRequest, BillAdjustment, ChannelSimulator, Request, Response, added_row_time, run_forever
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
    "added_row_time",
    "rfc3339",
    "run_forever",
]
