"""Trace ids for requests, tasks and log lines."""

from __future__ import annotations

import logging
from typing import Callable

from django.http import HttpRequest, HttpResponse

from payments.observability import (
    bind_trace_id,
    current_trace_id,
    new_trace_id,
    trace_id_from_traceparent,
    unbind_trace_id,
)


class TraceIdMiddleware:
    """Continue the caller's W3C trace or start one; answer it in ``X-Trace-Id``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        trace_id = trace_id_from_traceparent(request.headers.get("traceparent")) or new_trace_id()
        token = bind_trace_id(trace_id)
        try:
            response = self.get_response(request)
        finally:
            unbind_trace_id(token)
        response["X-Trace-Id"] = trace_id
        return response


class TraceIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "trace_id", None):
            record.trace_id = current_trace_id()
        return True
