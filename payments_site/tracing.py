"""The trace id of each request, answered in ``X-Trace-Id``, and a fresh log context per request.

OpenTelemetry's Django middleware (installed first by ``telemetry.setup_tracing``) starts the request's
span, continuing the caller's W3C ``traceparent`` when there is one; this middleware runs inside it.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from payments import observability


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
