"""Every channel call, timed, traced, logged and guarded by a circuit breaker, in one place.

``registry.get_channel`` wraps each adapter in ``InstrumentedChannel``, so no adapter and no caller has to
remember to measure. A call ends in one of the four outcome kinds of ``channels.base``, and that kind is the
``outcome`` label: ``definite`` (an answer), ``refused``, ``retryable``, ``unknown``.

Every call goes through its account's circuit breaker (``channels/breaker.py``: shared by every process through
Redis, the degradation of the seed design's section 4.2, ``../shared/seed/``). While the breaker is open, calls
are not sent: they raise ``CircuitOpen`` (a ``Retryable``, ``code="channel_circuit_open"``) with the time to
wait, and the tasks hold the work until then without spending a retry.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import Counter, Histogram

from channels.base import (
    BillFile,
    BillNotReady,
    Channel,
    CircuitOpen,
    Notification,
    NotificationReply,
    RefundResult,
    Refused,
    Retryable,
    TradeResult,
)
from channels.breaker import SharedBreaker

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

    def __init__(self, inner: Channel, breaker: SharedBreaker) -> None:
        self.inner = inner
        self.breaker = breaker
        self.name = inner.name
        self.account = inner.account
        self.currencies = inner.currencies
        self.bill_timezone = inner.bill_timezone

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)

    def _call(self, operation: str, call: Callable[[], T]) -> T:
        labels = {"channel": self.name, "operation": operation}
        admission = self.breaker.before_call()
        if not admission.allowed:
            SHORT_CIRCUITS.labels(**labels).inc()
            log.info("channel %s %s not sent: circuit open", self.name, operation,
                     extra={**labels, "outcome": "circuit_open"})
            raise CircuitOpen(f"channel {self.name} circuit open", code="channel_circuit_open",
                              retry_after_s=admission.retry_after_s)
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
                # A bill not made yet is the channel's answer, not a sign of sickness.
                failed = kind in ("retryable", "unknown") and not isinstance(error, BillNotReady)
                self.breaker.after_call(admission, failed=failed, elapsed_s=elapsed)
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


def instrumented(build: Callable[..., Channel]) -> Callable[..., Channel]:
    """Decorate the registry's factory: every channel it builds comes wrapped."""

    @functools.wraps(build)
    def wrapper(*args: str) -> Channel:
        from django.conf import settings

        from channels import breaker

        inner = build(*args)
        name = inner.name
        shared = breaker.SharedBreaker(
            name, inner.account or "default", breaker.redis_client(settings.REDIS_URL), breaker.Settings.from_django()
        )
        return InstrumentedChannel(inner, shared)

    return wrapper
