"""The webhooks worker's sender: a delivery committed is sent at once, by one sender of several, and the ones whose
notification nobody heard are found in the rows when a sender starts listening.

Real PostgreSQL (committed rows: the sender listens on a connection of its own) and a real HTTP receiver on
loopback; the senders run in threads of the test process, each with its own pool.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from django.db import connection

from payments import outbox
from payments.listener import conninfo
from payments.models import Event, WebhookDelivery
from payments.webhook_sender import WebhookSender
from payments_site.celery import WebhookSenderStep
from payments_site.celery import app as celery_app
from tests.conftest import make_actor
from tests.e2e.conftest import wait_until
from tests.test_webhooks import order_with_event
from tests.webhook_receiver import Receiver, running_receiver


@pytest.fixture
def receiver(settings, transactional_db) -> Iterator[Receiver]:
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.0/8"]
    with running_receiver() as running:
        yield running


@contextlib.contextmanager
def sending(threads: int = 4) -> Iterator[WebhookSender]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        sender = WebhookSender(pool=pool, waiting=2 * threads)
        thread = threading.Thread(target=sender.run, daemon=True)
        thread.start()
        try:
            assert sender.listening.wait(10), "the webhook sender is not listening"
            yield sender
        finally:
            sender.stop.set()
            thread.join(timeout=10)
            # Each pool thread keeps its database connection (CONN_MAX_AGE), as a worker's do: close them, or the
            # test database could not be dropped. One job per thread, held at a barrier until every thread has one.
            barrier = threading.Barrier(threads)

            def close_connection() -> None:
                barrier.wait(timeout=10)
                connection.close()

            for _ in range(threads):
                pool.submit(close_connection)
    assert not thread.is_alive(), "the webhook sender did not stop"


def delivered(event: Event) -> bool:
    return WebhookDelivery.objects.filter(event=event, state="delivered").exists()


def test_a_committed_delivery_is_sent_at_once_on_its_own_channel(receiver: Receiver) -> None:
    assert outbox.channel_of(outbox.DELIVER_WEBHOOK) == outbox.WEBHOOK_CHANNEL != outbox.CHANNEL
    with sending():
        started = time.monotonic()
        event = order_with_event(make_actor("Sender merchant"), receiver.url("/s"))
        wait_until(lambda: delivered(event), timeout_s=10, what="the delivery")
    # Not the sweep's work: that would wait WEBHOOK_SWEEP_FIRST_ATTEMPT_AFTER_S, and no sweep runs here.
    [received] = receiver.at("/s")
    assert received.headers["webhook-id"] == event.public_id
    assert received.at - started < 10
    delivery = WebhookDelivery.objects.get(event=event)
    assert (delivery.attempts, delivery.last_status) == (1, 200)
    assert list(delivery.attempt_rows.values_list("number", "http_status")) == [(1, 200)]


def test_two_senders_send_each_delivery_once(receiver: Receiver) -> None:
    actor = make_actor("Two senders merchant")
    with sending(), sending():
        events = [order_with_event(actor, receiver.url("/two"), number=f"TWO-{n}") for n in range(20)]
        wait_until(lambda: all(delivered(event) for event in events), timeout_s=20, what="20 deliveries")
        time.sleep(0.5)  # a second send, if there were one, would have come by now
    ids = sorted(r.headers["webhook-id"] for r in receiver.at("/two"))
    assert ids == sorted(event.public_id for event in events)
    assert set(WebhookDelivery.objects.filter(event__in=events).values_list("attempts", flat=True)) == {1}


def test_deliveries_made_while_nobody_listened_are_sent_when_a_sender_starts(receiver: Receiver) -> None:
    actor = make_actor("Catch-up merchant")
    events = [order_with_event(actor, receiver.url("/late"), number=f"LATE-{n}") for n in range(3)]
    time.sleep(0.3)
    assert receiver.at("/late") == []  # their notifications went to nobody
    with sending():
        wait_until(lambda: all(delivered(event) for event in events), timeout_s=10, what="the caught-up deliveries")
    assert sorted(r.headers["webhook-id"] for r in receiver.at("/late")) == sorted(e.public_id for e in events)


def test_a_sender_whose_connection_broke_sends_on_a_new_one(receiver: Receiver) -> None:
    actor = make_actor("Restart merchant")
    with sending(threads=1) as sender:
        sender.database_retry_s = (0.2,)
        first = order_with_event(actor, receiver.url("/restart"), number="RESTART-1")
        wait_until(lambda: delivered(first), timeout_s=10, what="the first delivery")
        # PostgreSQL ends the pool thread's session, as a restart would (the LISTEN of the sender itself and this
        # test's own stay): its next claim fails once on the dead connection.
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname ="
                           " current_database() AND pid <> pg_backend_pid() AND application_name <> %s",
                           [WebhookSender.application_name])
            assert cursor.fetchone()[0] >= 1
        second = order_with_event(actor, receiver.url("/restart"), number="RESTART-2")
        wait_until(lambda: delivered(second), timeout_s=10, what="the delivery after the connection broke")
    assert [r.headers["webhook-id"] for r in receiver.at("/restart")] == [first.public_id, second.public_id]


def test_an_attempt_made_while_the_database_restarts_is_recorded_not_sent_twice(receiver: Receiver) -> None:
    actor = make_actor("Failover merchant")
    connection.ensure_connection()
    test_pid = connection.connection.info.backend_pid

    def restart_postgres() -> None:
        # While the POST is at the merchant: PostgreSQL ends every session but the sender's LISTEN and this test's
        # own, the sending thread's among them, so recording the attempt fails once.
        with psycopg.connect(**conninfo("payments-tests"), autocommit=True) as admin:
            ended = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND pid <> %s AND application_name <> %s",
                [test_pid, WebhookSender.application_name]).fetchone()
            assert ended is not None and ended[0] >= 1

    with sending(threads=1):
        warm_up = order_with_event(actor, receiver.url("/warm"), number="FAILOVER-0")
        wait_until(lambda: delivered(warm_up), timeout_s=10, what="a first delivery (the thread's connection)")
        receiver.on_post["/failover"] = restart_postgres
        event = order_with_event(actor, receiver.url("/failover"), number="FAILOVER-1")
        # Recorded on a new connection within seconds, not sent again once the claim's lease (33 s) ran out.
        wait_until(lambda: delivered(event), timeout_s=10, what="the attempt recorded after the restart")
    assert [r.headers["webhook-id"] for r in receiver.at("/failover")] == [event.public_id]
    delivery = WebhookDelivery.objects.get(event=event)
    assert (delivery.attempts, delivery.last_status) == (1, 200)
    assert list(delivery.attempt_rows.values_list("number", "http_status")) == [(1, 200)]


def test_only_a_worker_that_consumes_the_webhooks_queue_runs_a_sender() -> None:
    class Worker:  # what the step reads of Celery's WorkController
        app = celery_app

    queues = celery_app.amqp.queues
    try:
        queues.select(["charges", "callbacks"])  # what `celery worker -Q charges,callbacks` does
        assert not WebhookSenderStep(Worker).include_if(Worker)
        queues.select(["webhooks"])
        assert WebhookSenderStep(Worker).include_if(Worker)
    finally:
        queues._consume_from = None  # back to every queue, for the tests that follow
