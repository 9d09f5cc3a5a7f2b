"""OpenTelemetry tracing and Sentry, set up once per process.

Every process gets a real ``TracerProvider``, so that trace ids exist (``X-Trace-Id``, log lines, the
transition log) even when no span is exported. Export is chosen by the environment:
``OTEL_EXPORTER_OTLP_ENDPOINT`` set → OTLP over HTTP; ``OTEL_TRACES_EXPORTER=console`` → stdout; otherwise
none, and spans are not even recorded: only their ids are made and passed on.

Web, beat, tests and management commands set up when Django is ready (``payments_site.apps``). A Celery
worker sets up in ``worker_process_init``, in each pool process after the fork (``payments_site.celery``),
so that the exporter's thread and connections belong to the process that uses them.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from django.conf import settings

from payments_site.logs import service_name

_tracing_done = False
_sentry_done = False


def setup_tracing() -> None:
    global _tracing_done
    if _tracing_done:
        return
    _tracing_done = True

    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    resource = Resource.create({
        "service.name": os.environ.get("OTEL_SERVICE_NAME") or f"payments-{service_name()}",
        "service.namespace": "payments",
        "deployment.environment": settings.SENTRY_ENVIRONMENT,
    })
    processor = _span_processor()
    if processor is None:
        # Nobody reads the spans, so none is recorded: the sampler drops them all, and what is left is what
        # the logs and X-Trace-Id need, trace and span ids made and propagated (traceparent, task headers).
        provider = TracerProvider(resource=resource, sampler=ALWAYS_OFF)
    else:
        # Sampler from OTEL_TRACES_SAMPLER(_ARG); by default every trace, or as the caller decided.
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)

    # Django: one server span per request (and the merchant's ``traceparent`` is continued); Celery: the
    # producer span injects the trace into the message, the consumer span continues it in the worker. These
    # carry the trace id everywhere, so they are always on.
    if processor is None:
        # The ids without the attributes: OpenTelemetry's Django middleware costs a tenth of a status poll's
        # CPU, and its Celery instrumentation a seventh of the dispatcher's (payments_site/tracing.py).
        settings.MIDDLEWARE.insert(0, "payments_site.tracing.RequestSpanMiddleware")
        from payments_site.tracing import carry_trace_through_tasks

        carry_trace_through_tasks()
    else:
        DjangoInstrumentor().instrument()
        # Before OpenTelemetry's middleware (which the line above put first): Django has already decoded
        # PATH_INFO, and OpenTelemetry's URL builder crashes on a path character beyond latin-1 (a 500).
        settings.MIDDLEWARE.insert(0, "payments.api.middleware.WsgiPathInfoMiddleware")
        CeleryInstrumentor().instrument()
        # httpx (the bill downloads, and channel calls through a proxy; a channel call or a webhook POST on a kept
        # connection makes its own span, channels/keepalive.py) and psycopg (a span per query): only when spans
        # are exported. Neither carries a trace id anywhere we read it (channels
        # ignore a traceparent), and unrecorded, their spans tell nobody anything: the httpx wrapper was a
        # fourteenth of a webhook worker's CPU, and a query span costs some 40 µs of Python (a tenth of a created
        # order's time).
        HTTPXClientInstrumentor().instrument(request_hook=_drop_query_string)
        PsycopgInstrumentor().instrument()


def _span_processor() -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return BatchSpanProcessor(OTLPSpanExporter())
    if os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    return None


def _drop_query_string(span: Any, request: Any) -> None:
    """Channel gateways may carry a signature in the query string (Alipay's ``sign``): keep it off spans."""
    if span.is_recording():
        url = str(request.url).split("?", 1)[0]
        span.set_attribute("url.full", url)
        span.set_attribute("http.url", url)


# -- Sentry ------------------------------------------------------------------------------------------------

REDACTED = "[redacted]"
# Keys whose values never leave the process: credentials, signatures, and the bodies of notifications
# (a channel's notification may carry payer data and is signed; the stored row is where to look at it).
_SECRET_KEY_WORDS = ("secret", "signature", "sign", "authorization", "password", "passwd", "token", "private",
                     "api_key", "apikey", "cookie", "session", "credential", "whsec")
_BODY_KEYS = {"body", "text", "content", "raw", "raw_body", "payload", "data", "plaintext", "ciphertext"}
# Secret-looking values wherever they appear, even in a message or a local variable's repr.
_SECRET_VALUES = re.compile(
    r"(sk_(?:test|live)_[A-Za-z0-9_\-]+|whsec_[A-Za-z0-9+/=]+|Bearer\s+\S+"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----)"
)


def _secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_KEY_WORDS)


def scrub(value: Any, *, in_frame_vars: bool = False) -> Any:
    """A copy of ``value`` with secrets and notification bodies replaced by ``[redacted]``."""
    if isinstance(value, dict):
        cleaned = {}
        for key, item in value.items():
            name = str(key)
            if _secret_key(name) or (in_frame_vars and name.lower() in _BODY_KEYS):
                cleaned[key] = REDACTED
            else:
                cleaned[key] = scrub(item, in_frame_vars=in_frame_vars or name == "vars")
        return cleaned
    if isinstance(value, list):
        return [scrub(item, in_frame_vars=in_frame_vars) for item in value]
    if isinstance(value, str):
        return _SECRET_VALUES.sub(REDACTED, value)
    return value


def before_send(event: dict, hint: dict) -> dict | None:
    request = event.get("request")
    if isinstance(request, dict):
        # Request bodies never leave: a callback's is the channel's signed notification, a merchant's
        # carries their customer's data. Headers are scrubbed by name below.
        request.pop("data", None)
        request.pop("cookies", None)
        request.pop("query_string", None)
    from payments.observability import current_trace_id, log_fields

    # Ops search the logs by our trace id, not by Sentry's own: put it, and the ids at hand, on the event.
    tags = event.setdefault("tags", {})
    tags.setdefault("trace_id", current_trace_id())
    for name, value in log_fields().items():
        tags.setdefault(name, value)
    return scrub(event)


def before_breadcrumb(crumb: dict, hint: dict) -> dict | None:
    data = crumb.get("data")
    if isinstance(data, dict) and isinstance(data.get("url"), str):
        data["url"] = data["url"].split("?", 1)[0]
    return scrub(crumb)


def sentry_options() -> dict[str, Any]:
    """The ``sentry_sdk.init`` arguments (tests use them with a capturing transport)."""
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    return {
        "dsn": settings.SENTRY_DSN,
        "environment": settings.SENTRY_ENVIRONMENT,
        "release": settings.SENTRY_RELEASE or None,
        "server_name": service_name(),
        # No user data, no request bodies (before_send also drops them, and scrubs what remains).
        "data_collection": {"user_info": False, "http_bodies": [], "database_query_data": False},
        "max_request_body_size": "never",
        "before_send": before_send,
        "before_breadcrumb": before_breadcrumb,
        "integrations": [
            DjangoIntegration(),
            # Beat sends a check-in for every scheduled task (the sweeps, the nightly reconciliation), so
            # Sentry's cron monitors notice a sweep that stopped running.
            CeleryIntegration(monitor_beat_tasks=True),
            # ERROR log lines are events: every "needs attention" and rejected notification reaches ops.
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
    }


def setup_sentry() -> None:
    global _sentry_done
    if _sentry_done or not settings.SENTRY_DSN:
        return
    _sentry_done = True
    import sentry_sdk

    sentry_sdk.init(**sentry_options())
