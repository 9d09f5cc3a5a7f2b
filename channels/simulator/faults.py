"""The fault book and the simulated clock, shared by every channel simulator (SIMULATORS.md)."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

OPERATIONS = ("create", "query", "close", "refund", "refund_query", "notify", "bill")
REQUEST_MODES = ("refuse", "http_500", "rate_limit", "timeout_after_processing")
NOTIFY_MODES = (
    "drop_notify",
    "duplicate_notify",
    "out_of_order_notify",
    "bad_signature_notify",
    "tamper_amount_notify",
)
MODES = ("latency", *REQUEST_MODES, *NOTIFY_MODES)
MAX_LATENCY_MS = 120_000


@dataclass
class Fault:
    operation: str  # one of OPERATIONS, or "*"
    mode: str
    count: int | None  # None: until cleared
    latency_ms: int = 0

    def matches(self, operation: str, modes: tuple[str, ...]) -> bool:
        return self.operation in (operation, "*") and self.mode in modes


def parse_fault(body: Any) -> Fault:
    """Validate a `POST /_sim/faults` body; ValueError says what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    operation, mode = body.get("operation"), body.get("mode")
    count, latency_ms = body.get("count"), body.get("latency_ms", 1000 if mode == "latency" else 0)
    if operation not in (*OPERATIONS, "*"):
        raise ValueError(f"operation must be one of {', '.join(OPERATIONS)} or *")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    # A fault that can never match would silently do nothing: refuse it instead.
    if mode in NOTIFY_MODES and operation not in ("notify", "*"):
        raise ValueError(f"{mode} applies to the notify operation only")
    if mode in REQUEST_MODES and operation == "notify":
        raise ValueError(f"{mode} does not apply to notify")
    if count is not None and (type(count) is not int or count < 1):
        raise ValueError("count must be a positive integer or omitted")
    if type(latency_ms) is not int or not 0 <= latency_ms <= MAX_LATENCY_MS:
        raise ValueError(f"latency_ms must be an integer from 0 to {MAX_LATENCY_MS}")
    return Fault(operation, mode, count, latency_ms)


class FaultBook:
    """Armed faults, in arming order.

    Which fault applies: each request (or notification attempt) consumes at most one matching `latency`
    fault (it sleeps, then goes on) and at most one matching fault of any other mode, which decides the
    outcome. Among several candidates the one armed first wins, whether it names the operation or `*`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def arm(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, operation: str, modes: tuple[str, ...]) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(operation, modes):
                    if fault.count is not None:
                        fault.count -= 1
                        if fault.count == 0:
                            self._faults.remove(fault)
                    return Fault(fault.operation, fault.mode, None, fault.latency_ms)
        return None

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._faults]


class Clock:
    """Simulated seconds for the notification retry schedule, running `speed` times faster than real time.

    Due times are kept in simulated seconds, so changing the speed also hurries notifications already waiting.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.set_speed(1.0)

    def set_speed(self, speed: float) -> None:
        with self._lock:
            sim_now = self._now() if hasattr(self, "_speed") else 0.0
            self._real_base, self._sim_base, self._speed = time.monotonic(), sim_now, float(speed)

    @property
    def speed(self) -> float:
        return self._speed

    def _now(self) -> float:
        return self._sim_base + (time.monotonic() - self._real_base) * self._speed

    def now(self) -> float:
        with self._lock:
            return self._now()

    def real_seconds_until(self, sim_time: float) -> float:
        with self._lock:
            return (sim_time - self._now()) / self._speed
