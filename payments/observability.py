"""The current trace id, bound once per request or task so that every log line and row can carry it.

The web middleware and the Celery signals in ``payments_site`` set it; services read it.
"""

from __future__ import annotations

import contextvars
import re
import secrets

_trace_id: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def new_trace_id() -> str:
    return secrets.token_hex(16)


def trace_id_from_traceparent(header: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header, or None if it is absent or malformed."""
    match = _TRACEPARENT.match((header or "").strip().lower())
    if not match or match.group(1) == "0" * 32:
        return None
    return match.group(1)


def current_trace_id() -> str:
    return _trace_id.get()


def bind_trace_id(trace_id: str) -> contextvars.Token[str]:
    return _trace_id.set(trace_id)


def unbind_trace_id(token: contextvars.Token[str]) -> None:
    _trace_id.reset(token)
