"""The outbox: PostgreSQL delivers a task's notification at commit, and the dispatcher publishes it to Celery.

Real PostgreSQL and Redis: a LISTENing connection of the test's own sees what PostgreSQL delivers, and the
broker's lists (kombu's Redis transport keeps a queue as a list named after it) show what was published.
The dispatcher runs in a thread, or as a process where its own broker settings matter.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from django.db import transaction
from django.utils import timezone
from opentelemetry import trace
from prometheus_client import REGISTRY

from payments import dispatcher as dispatching
from payments import outbox, services
from payments.models import Order
from payments_site.celery import app as celery_app
from tests.conftest import make_actor
from tests.e2e.conftest import database_url, free_port, start_dispatcher, wait_until

QUEUES = ("charges", "refunds", "callbacks")


def connect() -> psycopg.Connection:
    return psycopg.connect(**{**dispatching.conninfo(), "application_name": "test_outbox"}, autocommit=True)


@pytest.fixture
def listener(transactional_db) -> Iterator[psycopg.Connection]:
    with connect() as conn:
        conn.execute(f"LISTEN {outbox.CHANNEL}")
        yield conn


def received(conn: psycopg.Connection, *, timeout: float, stop_after: int | None = None) -> list[str]:
    return [notify.payload for notify in conn.notifies(timeout=timeout, stop_after=stop_after)]


def notify(payload: str) -> None:
    """Send a notification as a committed transaction would (autocommit: delivered at once)."""
    with connect() as conn:
        conn.execute("SELECT pg_notify(%s, %s)", [outbox.CHANNEL, payload])


@pytest.fixture
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(celery_app.conf.broker_url)
    client.delete(*QUEUES)
    yield client
    client.delete(*QUEUES)


def published(broker: redis.Redis, queue: str) -> list[tuple[str, list, dict]]:
    """(task name, args, headers) of each message waiting in ``queue``, oldest first."""
    messages = []
    for raw in reversed(broker.lrange(queue, 0, -1)):  # kombu LPUSHes and consumers BRPOP
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        messages.append((message["headers"]["task"], args, message["headers"]))
    return messages


@contextlib.contextmanager
def running(dispatcher: dispatching.Dispatcher) -> Iterator[dispatching.Dispatcher]:
    thread = threading.Thread(target=dispatcher.run, daemon=True)
    thread.start()
    try:
        yield dispatcher
    finally:
        dispatcher.stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive(), "the dispatcher did not stop"


@pytest.fixture
def dispatcher(transactional_db) -> Iterator[dispatching.Dispatcher]:
    with running(dispatching.Dispatcher()) as active:
        assert active.listening.wait(10), "the dispatcher is not listening"
        yield active


def publishes(task: str, result: str) -> float:
    return REGISTRY.get_sample_value("payments_outbox_publishes_total", {"task": task, "result": result}) or 0.0


# -- enqueue: PostgreSQL delivers at commit ---------------------------------------------------------------


def test_a_notification_arrives_when_its_transaction_commits_and_not_before(listener) -> None:
    with trace.get_tracer(__name__).start_as_current_span("request") as span:
        with transaction.atomic():
            outbox.enqueue(outbox.CHARGE_ORDER, 41)
            assert received(listener, timeout=0.5) == []
        context = span.get_span_context()
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert received(listener, timeout=5, stop_after=1) == [f"charge_order {traceparent} 41"]


def test_a_rolled_back_notification_never_arrives(listener) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        outbox.enqueue(outbox.CHARGE_ORDER, 1)
        raise RuntimeError("the order was not written")
    with transaction.atomic():
        outbox.enqueue(outbox.SUBMIT_REFUND, 2)
        with contextlib.suppress(RuntimeError), transaction.atomic():  # a savepoint, rolled back
            outbox.enqueue(outbox.CHARGE_ORDER, 3)
            raise RuntimeError("nor was this one")
    assert received(listener, timeout=1.5) == ["refund_order - 2"]


def test_services_enqueue_by_the_tasks_short_name(listener) -> None:
    merchant = make_actor("Outbox merchant").merchant
    order = Order.objects.create(
        merchant=merchant, merchant_order_no="OUTBOX-1", amount=100, currency="CNY", channel="sandbox",
        expires_at=timezone.now() + dt.timedelta(minutes=15), attention="charge_order_exhausted:x",
    )
    assert services.order_retry(order_id=order.pk)
    assert received(listener, timeout=5, stop_after=1) == [f"charge_order - {order.pk}"]


def test_only_whitelisted_tasks_can_be_enqueued(transactional_db) -> None:
    with pytest.raises(ValueError):
        outbox.enqueue("sweep_created_orders", 1)


# -- the dispatcher ---------------------------------------------------------------------------------------


def test_the_dispatcher_publishes_a_committed_task_in_the_requests_trace(dispatcher, broker) -> None:
    sent_before = publishes("charge_order", "sent")
    with trace.get_tracer(__name__).start_as_current_span("request") as span, transaction.atomic():
        outbox.enqueue(outbox.CHARGE_ORDER, 42)
        outbox.enqueue(outbox.APPLY_NOTIFICATION, 7)
    trace_id = format(span.get_span_context().trace_id, "032x")

    charges = wait_until(lambda: published(broker, "charges"), what="the charge in the broker")
    assert [(name, args) for name, args, _ in charges] == [("payments.tasks.charge_order", [42])]
    # The Celery producer span continues the request's trace: the worker's span will too.
    assert charges[0][2]["traceparent"].split("-")[1] == trace_id
    callbacks = wait_until(lambda: published(broker, "callbacks"), what="the notification task in the broker")
    assert [(name, args) for name, args, _ in callbacks] == [("payments.tasks.process_notification", [7])]
    assert publishes("charge_order", "sent") == sent_before + 1


def test_a_dispatcher_taking_over_publishes_the_work_sent_while_none_listened(transactional_db, broker) -> None:
    merchant = make_actor("Outbox merchant").merchant
    order, _ = services.order_create(merchant=merchant, merchant_order_no="LOST-1", amount=100, currency="CNY",
                                     channel="sandbox")  # committed with no dispatcher: its notification is gone
    charged = Order.objects.create(
        merchant=merchant, merchant_order_no="PENDING-1", amount=100, currency="CNY", channel="sandbox",
        expires_at=timezone.now() + dt.timedelta(minutes=15),
    )
    Order.objects.filter(pk=charged.pk).update(status="pending")  # past its charge: nothing to publish
    with running(dispatching.Dispatcher()) as active:
        assert active.listening.wait(10), "the dispatcher is not listening"
        charges = wait_until(lambda: published(broker, "charges"), what="the lost charge in the broker")
    assert [(name, args) for name, args, _ in charges] == [("payments.tasks.charge_order", [order.pk])]


def test_the_dispatcher_ignores_what_it_cannot_act_on_and_carries_on(dispatcher, broker, caplog) -> None:
    ignored_before = publishes("unknown", "ignored")
    bad = ["junk", "sweep_created_orders - 5", "charge_order - abc", "charge_order - -1", "charge_order 5",
           "charge_order - 5 6"]
    with caplog.at_level(logging.WARNING, logger="payments.dispatcher"):
        for payload in bad:
            notify(payload)
        notify("refund_order not-a-traceparent 8")  # a bad traceparent costs the trace, not the task
        notify("charge_order - 9")
        charges = wait_until(lambda: published(broker, "charges"), what="the valid charge in the broker")
    assert [(name, args) for name, args, _ in charges] == [("payments.tasks.charge_order", [9])]
    assert [args for _, args, _ in published(broker, "refunds")] == [[8]]
    ignored = [record.getMessage() for record in caplog.records if "ignored notification" in record.getMessage()]
    assert len(ignored) == len(bad)
    assert publishes("unknown", "ignored") == ignored_before + len(bad)


def test_only_one_of_two_dispatchers_is_active_and_the_other_takes_over(transactional_db, broker, caplog) -> None:
    caplog.set_level(logging.INFO, logger="payments.dispatcher")
    with running(dispatching.Dispatcher(standby_retry_s=0.2)) as first:
        assert first.listening.wait(10)
        with running(dispatching.Dispatcher(standby_retry_s=0.2)) as second:
            wait_until(lambda: any("standby" in r.getMessage() for r in caplog.records), what="a standby")
            assert not second.listening.is_set()
            assert outbox.active_dispatchers() == 1  # what /metrics reports and the alert watches

            notify("charge_order - 51")
            wait_until(lambda: published(broker, "charges"), what="the charge in the broker")
            assert not second.listening.wait(1)  # and meanwhile no second copy was published
            assert [args for _, args, _ in published(broker, "charges")] == [[51]]

            first.stop.set()
            assert second.listening.wait(5), "the standby did not take over"
            notify("charge_order - 52")
            wait_until(lambda: len(published(broker, "charges")) == 2, what="the second charge in the broker")
            assert [args for _, args, _ in published(broker, "charges")] == [[51], [52]]
    # The lock goes with the session, once the server has processed the disconnection (not at once on a busy
    # machine).
    wait_until(lambda: outbox.active_dispatchers() == 0, timeout_s=10, what="the lock released")


def test_the_dispatcher_reconnects_when_its_database_connection_is_lost(dispatcher, broker, caplog) -> None:
    caplog.set_level(logging.INFO, logger="payments.dispatcher")
    with connect() as conn:
        killed = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'payments-dispatcher' AND datname = current_database()"
        ).fetchall()
    assert killed == [(True,)]
    wait_until(lambda: any("listening on" in r.getMessage() for r in caplog.records), what="the dispatcher back")
    assert any("connection lost" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    notify("charge_order - 71")
    charges = wait_until(lambda: published(broker, "charges"), what="the charge in the broker")
    assert [args for _, args, _ in charges] == [[71]]


def _warnings(log_path: Path) -> list[str]:
    lines = []
    for line in log_path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("level") == "WARNING":
                lines.append(record["message"])
    return lines


def test_the_dispatcher_keeps_running_when_the_broker_is_unreachable(transactional_db, tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    env = {**os.environ, "DATABASE_URL": database_url(), "CELERY_BROKER_URL": f"redis://127.0.0.1:{closed}/0",
           "LOG_FORMAT": "json"}
    log_path = tmp_path / "dispatcher.log"
    proc = start_dispatcher(env, log_path)
    try:
        notify("charge_order - 61")
        wait_until(lambda: any("charge_order(61)" in line for line in _warnings(log_path)),
                   what="the dispatcher's warning about the first charge")
        notify("refund_order - 62")
        wait_until(lambda: any("refund_order(62)" in line for line in _warnings(log_path)),
                   what="the dispatcher's warning about the refund")
        assert proc.poll() is None
        assert all("from the rows once the broker is back" in line for line in _warnings(log_path))
    finally:
        proc.terminate()
        returncode = proc.wait(timeout=10)
    assert returncode == 0  # SIGTERM is a clean stop
    assert "dispatcher stopped" in log_path.read_text()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server to start a broker of its own")
def test_work_that_failed_to_publish_is_published_once_the_broker_is_back(transactional_db, tmp_path: Path) -> None:
    port = free_port()  # the broker of this test: down at first
    env = {**os.environ, "DATABASE_URL": database_url(), "CELERY_BROKER_URL": f"redis://127.0.0.1:{port}/0",
           "LOG_FORMAT": "json"}
    log_path = tmp_path / "dispatcher.log"
    proc = start_dispatcher(env, log_path)
    broker_proc = None
    try:
        merchant = make_actor("Outbox merchant").merchant
        order, _ = services.order_create(merchant=merchant, merchant_order_no="BLIP-1", amount=100, currency="CNY",
                                         channel="sandbox")
        wait_until(lambda: any(f"charge_order({order.pk})" in line for line in _warnings(log_path)),
                   what="the failed publish")
        broker_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                        "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        broker = redis.Redis(port=port)
        charges = wait_until(lambda: published(broker, "charges"), timeout_s=30,
                             what="the charge, published from the rows once the broker is back")
        assert [(name, args) for name, args, _ in charges] == [("payments.tasks.charge_order", [order.pk])]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if broker_proc is not None:
            broker_proc.terminate()
            broker_proc.wait(timeout=10)


def test_every_kind_of_work_names_a_registered_task() -> None:
    """The dispatcher sends by name (``payments.outbox.TASKS``): each name must be a task the workers know."""
    import payments.tasks  # noqa: F401 (registers the tasks, as a worker's autodiscovery does)

    for work, task_name in outbox.TASKS.items():
        assert task_name in celery_app.tasks, task_name
        assert task_name.rsplit(".", 1)[-1] == work
