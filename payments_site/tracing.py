"""The trace id of each request, answered in ``X-Trace-Id``, and a fresh log context per request; the trace
carried through Celery to the task.

The request's span is started first, continuing the caller's W3C ``traceparent`` when there is one, and this
middleware runs inside it. When spans are exported, OpenTelemetry's Django and Celery instrumentations start
the spans, with their attributes (installed by ``telemetry.setup_tracing``); when nothing exports,
``RequestSpanMiddleware`` and ``carry_trace_through_tasks`` below do, with the ids alone, in the same headers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import Token
from typing import Any

from celery import signals
from django.http import HttpRequest, HttpResponse
from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from payments import observability

_propagator = TraceContextTextMapPropagator()
# Resolved to the process's tracer provider on first use (a task's): TracerProvider.get_tracer builds a new
# tracer and its scope on every call.
_tracer = trace.get_tracer(__name__)


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


# (task id, thread) → (its span, the context token to detach): a threads pool runs several tasks at once, and a
# re-delivered task may run in two threads at once.
_task_spans: dict[tuple[str, int], tuple[trace.Span, Token[context.Context]]] = {}


def carry_trace_through_tasks() -> None:
    """The trace across Celery when no span is exported: the publisher puts the current ``traceparent`` in the
    message's headers, as OpenTelemetry's Celery instrumentation does, and the worker runs the task in a span
    continuing it. The instrumentation also makes a producer span per publish and attributes per task: a
    seventh of the dispatcher's CPU, for spans that nobody reads."""
    signals.before_task_publish.connect(_inject, weak=False)
    signals.task_prerun.connect(_start_task_span, weak=False)
    signals.task_postrun.connect(_end_task_span, weak=False)


def _inject(headers: dict | None = None, **_: Any) -> None:
    if headers is not None:
        _propagator.inject(headers)


def _start_task_span(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    if task_id is None or request is None:
        return
    carrier = {"traceparent": str(getattr(request, "traceparent", None) or ""),
               "tracestate": str(getattr(request, "tracestate", None) or "")}
    parent = _propagator.extract(carrier)
    span = _tracer.start_span(str(task.name), context=parent, kind=trace.SpanKind.CONSUMER)
    _task_spans[task_id, threading.get_ident()] = (span, context.attach(trace.set_span_in_context(span, parent)))


def _end_task_span(task_id: str | None = None, **_: Any) -> None:
    started = _task_spans.pop((task_id or "", threading.get_ident()), None)
    if started is not None:
        span, token = started
        context.detach(token)
        span.end()

