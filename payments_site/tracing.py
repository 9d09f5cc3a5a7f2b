"""The trace id of each request, answered in ``X-Trace-Id``, and a fresh log context per request.

The request's span is started first, continuing the caller's W3C ``traceparent`` when there is one, and this
middleware runs inside it. When spans are exported, OpenTelemetry's Django middleware starts it, with its
attributes (installed first by ``telemetry.setup_tracing``); when nothing exports, ``RequestSpanMiddleware``
below does, with the ids alone.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from payments import observability

_propagator = TraceContextTextMapPropagator()


class RequestSpanMiddleware:
    """The request's span when no span is exported: its ids, the caller's ``traceparent`` continued, and nothing
    else. OpenTelemetry's Django middleware also builds the span's name (a second URL resolve) and its attributes
    for every request, a tenth of a status poll's CPU, for a span that nobody reads."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.tracer = trace.get_tracer("payments_site.tracing")

    def __call__(self, request: HttpRequest) -> HttpResponse:
        carrier = {"traceparent": request.META.get("HTTP_TRACEPARENT", ""),
                   "tracestate": request.META.get("HTTP_TRACESTATE", "")}
        parent = _propagator.extract(carrier)
        with self.tracer.start_as_current_span(request.method or "HTTP", context=parent, kind=trace.SpanKind.SERVER):
            return self.get_response(request)


class TraceIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # Threads serve one request after another: ids bound for the last one must not leak into this one.
        token = observability.clear()
        try:
            response = self.get_response(request)
            response["X-Trace-Id"] = observability.current_trace_id()
        finally:
            observability.restore(token)
        return response
