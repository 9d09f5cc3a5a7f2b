"""OpenTelemetry: the request's trace id everywhere, the merchant's traceparent honoured, export by environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from payments import observability
from payments.models import TransitionLog

ROOT = Path(__file__).resolve().parents[1]
ORDER = {"merchant_order_no": "T-1", "amount": 100, "currency": "CNY", "channel": "sandbox"}


def test_services_and_the_transition_log_see_the_request_trace(client_a) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    response = client_a.post("/api/v1/orders", ORDER, format="json",
                             HTTP_TRACEPARENT=f"00-{trace_id}-b7ad6b7169203331-01")
    assert response["X-Trace-Id"] == trace_id
    assert TransitionLog.objects.get(object_id=response.json()["id"]).trace_id == trace_id


def test_a_malformed_traceparent_starts_a_new_trace(client_a) -> None:
    response = client_a.post("/api/v1/orders", ORDER, format="json", HTTP_TRACEPARENT="00-zz-yy-01")
    assert len(response["X-Trace-Id"]) == 32 and response["X-Trace-Id"] != "0" * 32


def test_outside_any_request_or_task_there_is_no_trace() -> None:
    assert observability.current_trace_id() == ""


def test_log_context_is_bound_once_and_cleared() -> None:
    before = dict(observability.log_fields())  # whatever earlier service calls in this thread bound
    token = observability.clear()
    try:
        observability.bind(order_id="ord_1", channel="sandbox", refund_id=None)
        observability.bind(refund_id="rfd_1")
        assert observability.log_fields() == {"order_id": "ord_1", "channel": "sandbox", "refund_id": "rfd_1"}
    finally:
        observability.restore(token)
    assert observability.log_fields() == before


def test_the_console_exporter_prints_the_spans_of_a_request(db, settings) -> None:
    # A fresh process: the tracer provider is chosen once per process, from its environment.
    code = (
        "import django; django.setup()\n"
        "from django.test import Client\n"
        "response = Client().get(\n"
        "    '/readyz', HTTP_TRACEPARENT='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')\n"
        "print('X-Trace-Id', response['X-Trace-Id'])\n"
    )
    database = settings.DATABASES["default"]
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "DJANGO_SETTINGS_MODULE": "payments_site.settings",
           "LOG_LEVEL": "WARNING",
           "DATABASE_URL": f"postgres://{database['USER']}@{database['HOST'] or '127.0.0.1'}:{database['PORT'] or 5432}"
                           f"/{database['NAME']}"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "X-Trace-Id 4bf92f3577b34da6a3ce929d0e0e4736" in out.stdout
    spans = [json.loads(chunk) for chunk in _json_objects(out.stdout)]
    names = {span["name"] for span in spans}
    assert {span["context"]["trace_id"] for span in spans} == {"0x4bf92f3577b34da6a3ce929d0e0e4736"}
    assert "GET readyz" in names
    assert any(span["attributes"].get("db.system") == "postgresql" for span in spans)  # psycopg, when exported


def test_a_webhook_post_is_a_client_span_without_the_query_string_when_spans_are_exported() -> None:
    post, printed = _exported_post_span(
        "from payments import webhook_http\n"
        "with running_receiver() as receiver, trace.get_tracer('t').start_as_current_span('parent'):\n"
        "    answer = webhook_http.post(receiver.url('/h?token=s3cret'), b'{}', msg_id='evt_1',\n"
        "                               secrets=['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'], live=False)\n"
        "print('status', answer.status)\n",
        WEBHOOK_ALLOWED_HOSTS="127.0.0.0/8",
    )
    assert post["attributes"]["url.full"].endswith("/h") and "s3cret" not in printed


def test_a_channel_call_is_a_client_span_without_the_query_string_when_spans_are_exported() -> None:
    post, printed = _exported_post_span(
        "from channels.http import Timeouts, new_client, send\n"
        "client = new_client(Timeouts())\n"
        "with running_receiver() as receiver, trace.get_tracer('t').start_as_current_span('parent'):\n"
        "    request = client.build_request('POST', receiver.url('/gateway.do?sign=s3cret'), content=b'{}')\n"
        "    print('status', send(client, request).status_code)\n",
    )
    assert post["attributes"]["url.full"].endswith("/gateway.do") and "s3cret" not in printed


def _exported_post_span(code: str, **env_vars: str) -> tuple[dict, str]:
    """Run ``code`` (a POST to a receiver inside a span named "parent") in a fresh process that prints its spans;
    check the POST's client span and return it, with all that was printed."""
    prelude = ("import django; django.setup()\n"
               "from opentelemetry import trace\n"
               "from tests.webhook_receiver import running_receiver\n")
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console", "DJANGO_SETTINGS_MODULE": "payments_site.settings",
           "LOG_LEVEL": "WARNING", **env_vars}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    out = subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "status 200" in out.stdout
    spans = {span["name"]: span for span in map(json.loads, _json_objects(out.stdout))}
    post = spans["POST"]
    assert (post["kind"], post["parent_id"]) == ("SpanKind.CLIENT", spans["parent"]["context"]["span_id"])
    assert post["attributes"]["http.response.status_code"] == 200
    return post, out.stdout


def _json_objects(text: str) -> list[str]:
    """The top-level JSON objects the console exporter printed (one per span, pretty-printed)."""
    objects, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "{":
            if depth == 0:
                start = i
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                objects.append(text[start:i + 1])
    return [obj for obj in objects if obj.startswith('{\n') and '"context"' in obj]  # spans, not log lines
