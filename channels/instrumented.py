"""Every channel call, timed, traced, logged and guarded by a circuit breaker, in one place.

``registry.get_channel`` wraps each adapter in ``InstrumentedChannel``, so no adapter and no caller has to
remember to measure. A call ends in one of the four outcome kinds of ``channels.base``, and that kind is the
``outcome`` label: ``definite`` (an answer), ``refused``, ``retryable``, ``unknown``.

The breaker is the degradation the design notes ask for (chapter 4.2): after ``threshold`` consecutive
retryable or unknown outcomes a channel is considered down, and for ``cooldown_s`` calls fail at once with
``Retryable(code="channel_circuit_open")`` instead of piling up timeouts on a sick gateway; the tasks retry
with backoff as for any retryable outcome. Then one trial call is let through (half-open): success closes
the breaker, failure opens it again. Breakers are per process and per channel: no shared state to lose.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import Counter, Gauge, Histogram

from channels.base import (
    BillFile,
    Channel,
    Notification,
    NotificationReply,
    RefundResult,
    Refused,
    Retryable,
    TradeResult,
)

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

CALL_SECONDS = Histogram(
    "payments_channel_call_duration_seconds", "Channel calls by channel, operation and outcome kind.",
    ["channel", "operation", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 30.0),
)
SHORT_CIRCUITS = Counter(
    "payments_channel_short_circuits", "Calls refused without being sent because the breaker was open.",
    ["channel", "operation"],
)
# Per process; the largest value across the processes of a host is what matters (one open breaker).
BREAKER_STATE = Gauge(
    "payments_channel_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ["channel"],
    multiprocess_mode="livemax",
)

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
_STATE_NAMES = {CLOSED: "closed", HALF_OPEN: "half-open", OPEN: "open"}


class CircuitBreaker:
    def __init__(
        self, channel: str, *, threshold: int = 5, cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.channel = channel
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._trial_running = False
        self._lock = threading.Lock()
        BREAKER_STATE.labels(channel=channel).set(CLOSED)

    def allow(self) -> bool:
        """Whether a call may go out now. In half-open state only one trial call goes out at a time."""
        with self._lock:
            if self.state == OPEN and self.clock() - self.opened_at >= self.cooldown_s:
                self._set(HALF_OPEN)
            if self.state == CLOSED:
                return True
            if self.state == HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return True
            return False

    def record(self, *, failed: bool) -> None:
        with self._lock:
            self._trial_running = False
            if not failed:
                self.failures = 0
                if self.state != CLOSED:
                    self._set(CLOSED)
                return
            self.failures += 1
            if self.state == HALF_OPEN or self.failures >= self.threshold:
                self.opened_at = self.clock()
                if self.state != OPEN:
                    self._set(OPEN)

    def _set(self, state: int) -> None:
        before, self.state = self.state, state
        BREAKER_STATE.labels(channel=self.channel).set(state)
        level = logging.WARNING if state == OPEN else logging.INFO
        log.log(
            level, "channel %s circuit %s -> %s after %d failures", self.channel, _STATE_NAMES[before],
            _STATE_NAMES[state], self.failures, extra={"channel": self.channel, "breaker_state": _STATE_NAMES[state]},
        )


T = TypeVar("T")


def outcome_kind(exc: BaseException | None) -> str:
    if exc is None:
        return "definite"
    if isinstance(exc, Refused):
        return "refused"
    if isinstance(exc, Retryable):
        return "retryable"
    return "unknown"  # UnknownOutcome, and anything unexpected: we cannot tell what the channel did


class InstrumentedChannel(Channel):
    """A channel adapter with every outbound call measured and guarded. Anything else is the adapter's."""

    def __init__(self, inner: Channel, breaker: CircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker
        self.name = inner.name
        self.currencies = inner.currencies
        self.bill_timezone = inner.bill_timezone

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)

    def _call(self, operation: str, call: Callable[[], T]) -> T:
        labels = {"channel": self.name, "operation": operation}
        if not self.breaker.allow():
            SHORT_CIRCUITS.labels(**labels).inc()
            log.info("channel %s %s not sent: circuit open", self.name, operation,
                     extra={**labels, "outcome": "circuit_open"})
            raise Retryable(f"channel {self.name} circuit open", code="channel_circuit_open",
                            retry_after_s=self.breaker.cooldown_s)
        error: BaseException | None = None
        started = time.perf_counter()
        with tracer.start_as_current_span(f"channel {self.name} {operation}", record_exception=False,
                                          set_status_on_exception=False) as span:
            try:
                return call()
            except BaseException as exc:
                error = exc
                raise
            finally:
                elapsed = time.perf_counter() - started
                kind = outcome_kind(error)
                self.breaker.record(failed=kind in ("retryable", "unknown"))
                CALL_SECONDS.labels(outcome=kind, **labels).observe(elapsed)
                code = getattr(error, "code", None) or (type(error).__name__ if error else "")
                if span.is_recording():
                    span.set_attributes({"payments.channel": self.name, "payments.channel.operation": operation,
                                         "payments.channel.outcome": kind})
                    if kind in ("retryable", "unknown"):
                        span.set_status(Status(StatusCode.ERROR, code))
                level = logging.WARNING if kind in ("retryable", "unknown") else logging.INFO
                log.log(level, "channel %s %s: %s%s in %.0f ms", self.name, operation, kind,
                        f" ({code})" if code else "", elapsed * 1000,
                        extra={**labels, "outcome": kind, "code": code, "duration_ms": round(elapsed * 1000, 1)})

    def create_trade(
        self, *, out_trade_no: str, amount: int, currency: str, description: str, notify_url: str,
        expires_at: dt.datetime,
    ) -> TradeResult:
        return self._call("create_trade", lambda: self.inner.create_trade(
            out_trade_no=out_trade_no, amount=amount, currency=currency, description=description,
            notify_url=notify_url, expires_at=expires_at,
        ))

    def query_trade(self, *, out_trade_no: str) -> TradeResult:
        return self._call("query_trade", lambda: self.inner.query_trade(out_trade_no=out_trade_no))

    def close_trade(self, *, out_trade_no: str) -> TradeResult:
        return self._call("close_trade", lambda: self.inner.close_trade(out_trade_no=out_trade_no))

    def refund(
        self, *, out_trade_no: str, out_refund_no: str, amount: int, total_amount: int, currency: str, reason: str
    ) -> RefundResult:
        return self._call("refund", lambda: self.inner.refund(
            out_trade_no=out_trade_no, out_refund_no=out_refund_no, amount=amount, total_amount=total_amount,
            currency=currency, reason=reason,
        ))

    def query_refund(self, *, out_trade_no: str, out_refund_no: str) -> RefundResult:
        return self._call("query_refund", lambda: self.inner.query_refund(
            out_trade_no=out_trade_no, out_refund_no=out_refund_no,
        ))

    def download_bill(self, *, day: dt.date) -> BillFile:
        return self._call("download_bill", lambda: self.inner.download_bill(day=day))

    # Local work (verifying a signature, building a reply): nothing to time and nothing to break.
    def parse_notification(self, *, headers: Mapping[str, str], body: bytes) -> Notification:
        return self.inner.parse_notification(headers=headers, body=body)

    def notification_reply(self, *, accepted: bool) -> NotificationReply:
        return self.inner.notification_reply(accepted=accepted)


def instrumented(build: Callable[[str], Channel]) -> Callable[[str], Channel]:
    """Decorate the registry's factory: every channel it builds comes wrapped."""

    @functools.wraps(build)
    def wrapper(name: str) -> Channel:
        from django.conf import settings

        breaker = CircuitBreaker(
            name, threshold=settings.CHANNEL_BREAKER_THRESHOLD, cooldown_s=settings.CHANNEL_BREAKER_COOLDOWN_S
        )
        return InstrumentedChannel(build(name), breaker)

    return wrapper
