"""What the current request or task is about, for every log line and row written on its behalf.

The trace id is OpenTelemetry's: the web middleware and the Celery instrumentation (set up in
``payments_site``) start the spans; services only read the current one. The ids of the order, refund,
merchant and channel at hand are bound once, in a context variable, where the service loads them, instead of
being passed to every log call; the logging filter in ``payments_site.logs`` copies them onto each record.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Mapping
from types import MappingProxyType

from opentelemetry import trace

# The fields a log line may carry besides the trace: order_id, refund_id, merchant_id, channel, task, and
# origin_trace_id (the trace that created the order, on the lines of a channel notification about it).
LogFields = Mapping[str, str]
# The default is shared by every context: read-only, so that nobody can change it for all.
_fields: contextvars.ContextVar[LogFields] = contextvars.ContextVar("log_fields", default=MappingProxyType({}))
_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")


def current_trace_id() -> str:
    """The current OpenTelemetry trace id as 32 hex characters, or "" outside any span."""
    trace_id = trace.get_current_span().get_span_context().trace_id
    return format(trace_id, "032x") if trace_id else ""


def current_span_id() -> str:
    span_id = trace.get_current_span().get_span_context().span_id
    return format(span_id, "016x") if span_id else ""


def log_fields() -> LogFields:
    return _fields.get()


def bind(**fields: str | None) -> None:
    """Add ids to the current request's or task's log context (empty values are ignored)."""
    kept = {name: str(value) for name, value in fields.items() if value}
    if kept:
        _fields.set({**_fields.get(), **kept})


def clear() -> contextvars.Token[LogFields]:
    """Start an empty log context (a new request or task); the token restores the previous one."""
    return _fields.set({})


def restore(token: contextvars.Token[LogFields]) -> None:
    _fields.reset(token)


def link_origin_trace(origin_trace_id: str) -> None:
    """Tie the current work (a channel notification) to the trace that created its order.

    A notification starts its own trace; the span link lets a trace viewer jump to the order's trace,
    and ``origin_trace_id`` on the log lines lets a search for the order's trace id find them too.
    """
    if not _TRACE_ID.match(origin_trace_id or "") or origin_trace_id == current_trace_id():
        return
    bind(origin_trace_id=origin_trace_id)
    span = trace.get_current_span()
    if span.is_recording():
        # The span id of the origin is unknown here (only the trace id is stored); a link needs a valid
        # context, so it points at the trace with a placeholder span id and says so in an attribute.
        context = trace.SpanContext(
            trace_id=int(origin_trace_id, 16), span_id=1, is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        )
        span.add_link(context, {"link.kind": "order_origin", "payments.origin_trace_id": origin_trace_id})
        span.set_attribute("payments.origin_trace_id", origin_trace_id)
