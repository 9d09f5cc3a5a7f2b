"""One trace per payment across the web process, the worker and the channel call; metrics from both.

The worker is a real process: its JSON lines are read from its log file. The test process (the API and
the callback endpoint, on pytest-django's live server) is read through a handler on the root logger with
the project's own formatter and context filter.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import httpx
import pytest

from payments.models import Order
from tests.conftest import json_lines, make_actor
from tests.e2e.conftest import Simulator, broker_is_rabbitmq, wait_until
from tests.e2e.orders import create_order, order_in, pay

pytestmark = pytest.mark.e2e


def test_one_trace_follows_the_payment_through_web_worker_and_channel(
    e2e: Simulator, worker: Path, web_log: io.StringIO
) -> None:
    client = make_actor("Trace merchant").client()
    response = client.post(
        "/api/v1/orders", {"merchant_order_no": "TRACE-1", "amount": 1000, "currency": "CNY", "channel": "sandbox"},
        format="json",
    )
    assert response.status_code == 201
    trace_id = response["X-Trace-Id"]
    order_id = response.json()["id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id)
    assert Order.objects.get(public_id=order_id).trace_id == trace_id

    pay(order_in(order_id, "pending"))
    order_in(order_id, "succeeded")

    def worker_lines() -> list[dict]:
        return [line for line in json_lines(worker.read_text()) if line.get("order_id") == order_id]

    # The worker writes the succeeded transition after the commit that the test saw: wait for the line.
    wait_until(lambda: any("pending -> succeeded" in line["message"] for line in worker_lines()),
               what="the worker's log of the payment")
    web = [line for line in json_lines(web_log.getvalue()) if line.get("order_id") == order_id]
    work = worker_lines()
    assert all(line["service"] == "worker" for line in work)

    # Everything done on behalf of the merchant's request carries its trace id, in both processes.
    charge = [line for line in web + work if "origin_trace_id" not in line]
    assert {line["trace_id"] for line in charge} == {trace_id}, charge
    messages = [line["message"] for line in charge]
    assert f"order {order_id} created" in messages
    assert any(line["logger"] == "channels.instrumented" and line.get("operation") == "create_trade"
               and line.get("outcome") == "definite" and line["service"] == "worker" for line in charge)
    assert f"order {order_id}: created -> pending" in messages
    assert all(line["span_id"] and line["merchant_id"].startswith("mch_") for line in work)

    # The channel's notification is its own trace, linked to the order's: a search for the order's trace id
    # in trace_id or origin_trace_id finds the callback in the web process and its processing in the worker.
    callback = [line for line in web + work if line.get("origin_trace_id") == trace_id]
    assert {line["service"] for line in callback} == {"web", "worker"}
    assert all(line["trace_id"] != trace_id for line in callback)
    callback_messages = [line["message"] for line in callback]
    assert f"accepted sandbox notification for {order_id}" in callback_messages
    assert f"order {order_id}: pending -> succeeded" in callback_messages
    assert all("origin_trace_id" in line for line in web + work if "pending -> succeeded" in line["message"])

    # Every line has the documented shape.
    for line in web + work:
        assert {"timestamp", "level", "logger", "message", "service", "trace_id", "span_id"} <= set(line)
        assert line["timestamp"].endswith("+00:00")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text, 0 if it is absent."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample_labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(sample_labels.get(key) == value for key, value in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_show_the_payment_from_web_and_worker(e2e: Simulator, live_server) -> None:
    def scrape() -> str:
        response = httpx.get(f"{live_server.url}/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return response.text

    before = scrape()
    client = make_actor("Metrics merchant").client()
    order = order_in(create_order(client, "METRICS-1")["id"], "pending")
    pay(order)
    order_in(order.public_id, "succeeded")
    # Counters are written when the transaction commits, just after the test can see the row.
    after = wait_until(
        lambda: (text := scrape()) and metric(text, "payments_orders_total", channel="sandbox", status="succeeded")
        > metric(before, "payments_orders_total", channel="sandbox", status="succeeded") and text,
        what="the succeeded order to be counted",
    )

    def moved(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    # Recorded in this process (the API and the callback)…
    assert moved("payments_orders_total", channel="sandbox", status="created") >= 1
    assert moved("payments_notifications_total", channel="sandbox", result="accepted", reason="new") >= 1
    # …and in the worker: the channel call it timed, and the transitions it made.
    assert moved("payments_channel_call_duration_seconds_count", channel="sandbox", operation="create_trade",
                 outcome="definite") >= 1
    assert moved("payments_orders_total", channel="sandbox", status="pending") >= 1
    assert metric(after, "payments_channel_breaker_state", channel="sandbox") == 0
    # State read at scrape time.
    if not broker_is_rabbitmq():  # RabbitMQ's own exporter reports its queues (payments.metrics)
        assert 'payments_queue_depth{queue="charges"}' in after
    assert metric(after, "payments_db_connections") >= 1
    assert metric(after, "payments_outbox_dispatchers_active") == 1
    assert metric(after, "payments_db_connections_max") >= metric(after, "payments_db_connections")
