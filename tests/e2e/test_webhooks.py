"""Merchant webhooks on the real stack: worker, dispatcher, beat's sweep and a real HTTP receiver on loopback.

The e2e worker runs with the schedule compressed to 1 s, 1 s, 2 s and a 3 s timeout (tests/e2e/conftest.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from standardwebhooks import Webhook

from payments.models import Event, Merchant, WebhookAttempt, WebhookDelivery
from tests.conftest import Actor, make_actor
from tests.e2e.conftest import WEBHOOK_ENV, Simulator, empty_the_broker, wait_until
from tests.e2e.orders import create_order, order_in, pay
from tests.webhook_receiver import Received, Receiver, running_receiver

SCHEDULE = [int(s) for s in WEBHOOK_ENV["WEBHOOK_RETRY_SCHEDULE_S"].split(",")]


@pytest.fixture
def receiver(e2e: Simulator, settings) -> Iterator[Receiver]:
    # The test process checks notify_url on create: loopback is allowed here as in the worker.
    settings.WEBHOOK_ALLOWED_HOSTS = WEBHOOK_ENV["WEBHOOK_ALLOWED_HOSTS"].split(",")
    with running_receiver() as running:
        yield running


def verified(actor_or_secret: Actor | str, received: Received) -> dict:
    secret = actor_or_secret if isinstance(actor_or_secret, str) else (
        Merchant.objects.get(pk=actor_or_secret.merchant.pk).webhook_secret)
    return Webhook(secret).verify(received.body, received.headers)


def paid_order(actor: Actor, receiver: Receiver, path: str, number: str) -> dict:
    created = create_order(actor.client(), number, notify_url=receiver.url(path))
    pay(order_in(created["id"], "pending"))
    order_in(created["id"], "succeeded")
    return created


def test_a_payment_and_its_refund_reach_the_merchant_signed(receiver: Receiver) -> None:
    actor = make_actor("Webhook merchant")
    created = paid_order(actor, receiver, "/hooks/a", "WH-1")
    refund = actor.client().post(f"/api/v1/orders/{created['id']}/refunds",
                                 {"merchant_refund_no": "WH-R1", "amount": 400}, format="json")
    assert refund.status_code == 201
    wait_until(lambda: len(receiver.at("/hooks/a")) >= 3, what="three webhooks")
    events = [verified(actor, r) for r in receiver.at("/hooks/a")]
    assert sorted(e["type"] for e in events) == ["order.pending", "order.succeeded", "refund.succeeded"]
    for received, event in zip(receiver.at("/hooks/a"), events, strict=True):
        assert received.headers["webhook-id"] == event["id"]
        assert received.headers["User-Agent"].startswith("payments-processor-webhooks/")
    succeeded = next(e for e in events if e["type"] == "order.succeeded")
    assert succeeded["data"]["object"]["id"] == created["id"]
    assert succeeded["data"]["object"]["status"] == "succeeded"
    wait_until(lambda: WebhookDelivery.objects.filter(state="delivered").count() == 3, what="3 delivered")


def test_a_failing_receiver_is_retried_on_schedule_with_the_same_webhook_id(receiver: Receiver) -> None:
    actor = make_actor("Flaky merchant")
    receiver.script["/hooks/flaky"] = [500, 500]  # then 200
    created = create_order(actor.client(), "WH-2", notify_url=receiver.url("/hooks/flaky"))
    order_in(created["id"], "pending")
    wait_until(lambda: len(receiver.at("/hooks/flaky")) >= 3, timeout_s=30, what="three attempts")
    attempts = receiver.at("/hooks/flaky")
    event = Event.objects.get(order__public_id=created["id"])
    assert {r.headers["webhook-id"] for r in attempts} == {event.public_id}
    gaps = [later.at - earlier.at for earlier, later in zip(attempts, attempts[1:], strict=False)]
    for gap, delay in zip(gaps, SCHEDULE[: len(gaps)], strict=True):
        assert gap >= delay * 0.99  # never before its time (the sweep may add up to half a second)
    delivery = wait_until(lambda: WebhookDelivery.objects.filter(
        state="delivered", event__order__public_id=created["id"]).first(), what="the delivery delivered")
    assert delivery.attempts == 3
    assert list(WebhookAttempt.objects.filter(delivery=delivery).values_list("http_status", flat=True)) == [
        500, 500, 200]
    time.sleep(1.5)
    assert len(receiver.at("/hooks/flaky")) == 3  # nothing after the delivery


def test_a_receiver_that_never_succeeds_ends_failed_then_redelivery_works(receiver: Receiver) -> None:
    actor = make_actor("Down merchant")
    receiver.script["/hooks/down"] = [503] * (len(SCHEDULE) + 1)
    created = create_order(actor.client(), "WH-3", notify_url=receiver.url("/hooks/down"))
    delivery = wait_until(
        lambda: WebhookDelivery.objects.filter(state="failed", event__order__public_id=created["id"]).first(),
        timeout_s=30, what="the delivery failed after the whole schedule",
    )
    assert delivery.attempts == len(SCHEDULE) + 1 == WebhookAttempt.objects.filter(delivery=delivery).count()
    event = delivery.event
    shown = actor.client().get(f"/api/v1/events/{event.public_id}").json()
    assert [(d["state"], d["attempts"], d["last_status"]) for d in shown["deliveries"]] == [
        ("failed", len(SCHEDULE) + 1, 503)]

    again = actor.client().post(f"/api/v1/events/{event.public_id}/redeliver")  # the receiver is back
    assert again.status_code == 202
    wait_until(lambda: WebhookDelivery.objects.filter(event=event, state="delivered").exists(), what="redelivered")
    shown = actor.client().get(f"/api/v1/events/{event.public_id}").json()
    assert [d["state"] for d in shown["deliveries"]] == ["failed", "delivered"]  # the old chain stays
    assert verified(actor, receiver.at("/hooks/down")[-1])["id"] == event.public_id


def test_a_hanging_receiver_costs_one_timed_out_attempt_and_delays_nobody_else(receiver: Receiver) -> None:
    slow, other = make_actor("Hanging merchant"), make_actor("Other merchant")
    receiver.hang_s["/hooks/hang"] = 30
    create_order(slow.client(), "WH-4", notify_url=receiver.url("/hooks/hang"))
    wait_until(lambda: receiver.at("/hooks/hang"), what="the hanging receiver called")
    created = create_order(other.client(), "WH-5", notify_url=receiver.url("/hooks/other"))
    order_in(created["id"], "pending")
    arrived = wait_until(lambda: receiver.at("/hooks/other"), what="the other merchant's webhook")[0]
    # While the hanging receiver holds its attempt, the other merchant's event goes out as soon as it exists.
    event = Event.objects.get(order__public_id=created["id"])
    assert arrived.wall - event.created_at.timestamp() < 1.0
    assert WebhookDelivery.objects.get(event=event).attempts == 1
    hung = wait_until(lambda: WebhookAttempt.objects.filter(delivery__url__endswith="/hooks/hang").first(),
                      timeout_s=10, what="the timed-out attempt recorded")
    assert hung.http_status is None and "no answer within" in hung.error
    assert hung.latency_ms < 5000


def test_duplicate_channel_notifications_make_one_event_and_one_delivery(e2e: Simulator, receiver: Receiver) -> None:
    actor = make_actor("Duplicate merchant")
    created = create_order(actor.client(), "WH-6", notify_url=receiver.url("/hooks/dup"))
    order = order_in(created["id"], "pending")
    e2e.fault("notify", "duplicate_notify", count=1)
    pay(order)
    order_in(created["id"], "succeeded")
    wait_until(lambda: len(e2e.trade(order.public_id)["notifications"]) >= 2, what="the duplicated notification")
    wait_until(lambda: any(json.loads(r.body)["type"] == "order.succeeded" for r in receiver.at("/hooks/dup")),
               what="the order.succeeded webhook")
    events = Event.objects.filter(order__public_id=created["id"], type="order.succeeded")
    assert events.count() == 1
    assert WebhookDelivery.objects.filter(event__in=events).count() == 1
    assert len([r for r in receiver.at("/hooks/dup") if json.loads(r.body)["type"] == "order.succeeded"]) == 1


def test_a_broker_that_loses_everything_loses_no_delivery(receiver: Receiver) -> None:
    actor = make_actor("Flushed merchant")
    receiver.script["/hooks/flush"] = [500]  # the first attempt fails: the retry is due in a second
    created = create_order(actor.client(), "WH-7", notify_url=receiver.url("/hooks/flush"))
    wait_until(lambda: receiver.at("/hooks/flush"), what="the first attempt")
    empty_the_broker()  # whatever was queued is gone; the delivery's row is not
    wait_until(lambda: WebhookDelivery.objects.filter(event__order__public_id=created["id"], state="delivered")
               .exists(), timeout_s=20, what="the sweep to deliver it from the row")


def test_during_rotation_both_secrets_verify(receiver: Receiver) -> None:
    actor = make_actor("Rotating merchant")
    old = Merchant.objects.get(pk=actor.merchant.pk).webhook_secret
    rotated = actor.client().post("/api/v1/webhook_secret/rotate")
    assert rotated.status_code == 200
    new = rotated.json()["webhook_secret"]
    assert new.startswith("whsec_") and new != old
    created = create_order(actor.client(), "WH-8", notify_url=receiver.url("/hooks/rotate"))
    order_in(created["id"], "pending")
    received = wait_until(lambda: receiver.at("/hooks/rotate"), what="the webhook")[0]
    assert len(received.headers["webhook-signature"].split(" ")) == 2
    assert verified(old, received)["type"] == "order.pending"
    assert verified(new, received)["type"] == "order.pending"


def test_merchants_cannot_read_or_redeliver_each_others_events(receiver: Receiver) -> None:
    a, b = make_actor("Merchant A hooks"), make_actor("Merchant B hooks")
    created = create_order(a.client(), "WH-9", notify_url=receiver.url("/hooks/iso"))
    order_in(created["id"], "pending")
    event = Event.objects.get(order__public_id=created["id"])
    assert a.client().get(f"/api/v1/events/{event.public_id}").status_code == 200
    assert b.client().get(f"/api/v1/events/{event.public_id}").status_code == 404
    assert b.client().post(f"/api/v1/events/{event.public_id}/redeliver").status_code == 404
    assert WebhookDelivery.objects.filter(event=event).count() == 1
