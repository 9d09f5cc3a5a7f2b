"""One payment through every real part: API → outbox dispatcher → Redis → worker → sandbox simulator →
callback → worker."""

from __future__ import annotations

import httpx
import pytest

from payments import services
from payments.models import ChannelNotification, Event, Order, Refund, TransitionLog
from tests.conftest import make_actor
from tests.e2e.conftest import Simulator, wait_until
from tests.e2e.orders import create_order, order_in, pay

pytestmark = pytest.mark.e2e


def test_order_is_paid_and_refunded_end_to_end(e2e: Simulator) -> None:
    client = make_actor("E2E merchant").client()
    created = create_order(client)
    assert created["status"] == "created"

    order = order_in(created["id"], "pending")
    assert order.pay_url.startswith(e2e.base_url)
    pay(order)
    order = order_in(created["id"], "succeeded")
    assert order.paid_at is not None and order.channel_trade_no

    refund = client.post(f"/api/v1/orders/{order.public_id}/refunds",
                         {"merchant_refund_no": "R-1", "amount": 400}, format="json")
    assert refund.status_code == 201
    order = order_in(created["id"], "partially_refunded")
    assert order.amount_refunded == 400
    client.post(
        f"/api/v1/orders/{order.public_id}/refunds", {"merchant_refund_no": "R-2", "amount": 600}, format="json"
    )
    order = order_in(created["id"], "refunded")
    assert order.amount_refunded == 1000
    wait_until(lambda: Refund.objects.filter(order=order, status="succeeded").count() == 2, what="both refunds")

    trade = e2e.trade(order.public_id)
    assert trade["status"] == "SUCCEEDED" and trade["create_calls"] == 1
    assert sorted(r["amount"] for r in trade["refunds"]) == [400, 600]
    assert list(TransitionLog.objects.filter(object_id=order.public_id).values_list("to_state", flat=True)) == [
        "created", "pending", "succeeded", "partially_refunded", "refunded",
    ]
    types = list(Event.objects.filter(order=order).order_by("id").values_list("type", flat=True))
    assert types == ["order.pending", "order.succeeded", "refund.succeeded", "refund.succeeded"]


def test_forged_notification_changes_nothing(e2e: Simulator, live_server) -> None:
    client = make_actor("E2E merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    body = ('{"id":"sbx_n_forged","type":"trade.succeeded","created_at":"2026-01-01T00:00:00Z","data":'
            f'{{"object":"trade","out_trade_no":"{order.public_id}","trade_no":"x","status":"SUCCEEDED",'
            '"amount":1000,"currency":"CNY","paid_at":"2026-01-01T00:00:00Z"}}')
    import time
    answer = httpx.post(f"{live_server.url}/callbacks/sandbox", content=body, headers={
        "X-Sandbox-Timestamp": str(int(time.time())), "X-Sandbox-Signature": "0" * 64,
        "Content-Type": "application/json"})
    assert answer.status_code == 400
    rejected = ChannelNotification.objects.get(reason="bad_signature")
    assert rejected.state == "rejected" and rejected.channel_notification_id is None
    order.refresh_from_db()
    assert order.status == "pending"


def test_bad_signature_from_channel_is_rejected_and_the_retry_applies(e2e: Simulator) -> None:
    client = make_actor("E2E merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    e2e.fault("notify", "bad_signature_notify", count=1)
    pay(order)
    order = order_in(order.public_id, "succeeded")
    assert ChannelNotification.objects.filter(state="rejected", reason="bad_signature").count() == 1
    assert TransitionLog.objects.filter(object_id=order.public_id, transition="mark_succeeded").count() == 1


def test_duplicated_notification_makes_one_transition_and_one_event(e2e: Simulator) -> None:
    client = make_actor("E2E merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    e2e.fault("notify", "duplicate_notify", count=1)
    pay(order)
    order = order_in(order.public_id, "succeeded")
    wait_until(lambda: len(e2e.trade(order.public_id)["notifications"]) >= 1, what="the notification")
    assert ChannelNotification.objects.filter(order=order).count() == 1
    assert TransitionLog.objects.filter(object_id=order.public_id, transition="mark_succeeded").count() == 1
    assert Event.objects.filter(order=order, type="order.succeeded").count() == 1


def test_tampered_amount_is_rejected_and_the_query_sweep_settles_the_order(e2e: Simulator, settings) -> None:
    from payments import tasks

    client = make_actor("E2E merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    e2e.fault("notify", "tamper_amount_notify", count=1)
    pay(order)
    wait_until(lambda: ChannelNotification.objects.filter(order=order, reason="amount_mismatch").exists(),
               what="the tampered notification to be rejected")
    order.refresh_from_db()
    assert order.status == "pending"
    # The channel is paid but told us a wrong amount: the pending sweep asks it and settles the order.
    settings.SWEEP_PENDING_QUERY_AFTER_S = -5
    assert tasks.sweep_pending_orders() >= 1
    order_in(order.public_id, "succeeded")


def test_channel_500s_are_retried_without_a_second_trade(e2e: Simulator) -> None:
    client = make_actor("E2E merchant").client()
    e2e.fault("create", "http_500", count=2)
    order = order_in(create_order(client)["id"], "pending")
    trade = e2e.trade(order.public_id)
    assert trade["create_calls"] == 3 and trade["status"] == "WAITING"
    pay(order)
    order_in(order.public_id, "succeeded")


def test_unanswered_create_is_queried_not_resent(e2e: Simulator) -> None:
    client = make_actor("E2E merchant").client()
    e2e.fault("create", "timeout_after_processing", count=1)
    order = order_in(create_order(client)["id"], "pending")
    trade = e2e.trade(order.public_id)
    # The query found the trade, so nothing was sent again: one create, one trade.
    assert trade["create_calls"] == 1 and trade["status"] == "WAITING"
    pay(order)
    order_in(order.public_id, "succeeded")


def test_unanswered_refund_is_queried_not_resent(e2e: Simulator) -> None:
    client = make_actor("E2E merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    pay(order)
    order_in(order.public_id, "succeeded")
    e2e.fault("refund", "timeout_after_processing", count=1)
    client.post(
        f"/api/v1/orders/{order.public_id}/refunds", {"merchant_refund_no": "R-1", "amount": 1000}, format="json"
    )
    order = order_in(order.public_id, "refunded")
    assert [r["amount"] for r in e2e.trade(order.public_id)["refunds"]] == [1000]


def test_exhausted_charge_leaves_the_order_flagged_for_ops(e2e: Simulator) -> None:
    client = make_actor("E2E merchant").client()
    e2e.fault("create", "http_500")  # until cleared
    order_id = create_order(client)["id"]
    order = wait_until(lambda: Order.objects.filter(public_id=order_id).exclude(attention="").first(),
                       timeout_s=40, what="the charge to give up")
    assert order.status == "created"
    assert order.attention.startswith("charge_order_exhausted")

    # Ops retry once the channel is back: the charge asks the channel first, then places one trade.
    e2e.clear_faults()
    assert services.order_retry(order_id=order.pk)
    order = order_in(order_id, "pending")
    assert order.attention == "" and e2e.trade(order_id)["status"] == "WAITING"


def test_close_is_confirmed_with_the_channel(e2e: Simulator) -> None:
    client = make_actor("E2E merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    response = client.post(f"/api/v1/orders/{order.public_id}/close")
    assert response.status_code == 200 and response.json()["status"] == "closed"
    assert e2e.trade(order.public_id)["status"] == "CLOSED"
    assert httpx.post(order.pay_url, data={"action": "pay"}).status_code == 409


def test_close_of_an_order_paid_at_the_channel_answers_409_and_records_the_payment(e2e: Simulator) -> None:
    client = make_actor("E2E merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    e2e.fault("notify", "drop_notify")  # we hear nothing of the payment
    pay(order)
    response = client.post(f"/api/v1/orders/{order.public_id}/close")
    assert response.status_code == 409 and response.json()["error"]["code"] == "order_state"
    order.refresh_from_db()
    assert order.status == "succeeded"


def test_expired_orders_are_closed_by_the_sweep(e2e: Simulator) -> None:
    from django.utils import timezone

    from payments import tasks

    client = make_actor("E2E merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    Order.objects.filter(pk=order.pk).update(expires_at=timezone.now())  # test setup: skip the wait
    assert tasks.sweep_expired_orders() == 1
    order_in(order.public_id, "closed")
    assert e2e.trade(order.public_id)["status"] == "CLOSED"


def test_broker_losing_everything_loses_no_order(e2e: Simulator, settings) -> None:
    from payments import tasks
    from payments_site.celery import app
    from tests.e2e.conftest import WORKER_NAME, broker_queue_depth, empty_the_broker

    client = make_actor("E2E merchant").client()
    app.control.cancel_consumer("charges", destination=[WORKER_NAME], reply=True)
    try:
        order_id = create_order(client)["id"]
        # The dispatcher publishes after the commit, on its own time: wait for the message, then lose it.
        wait_until(lambda: broker_queue_depth("charges"), what="the charge message in the broker")
        empty_the_broker()  # the charge message is gone
    finally:
        app.control.add_consumer("charges", destination=[WORKER_NAME], reply=True)
    assert Order.objects.get(public_id=order_id).status == "created"
    settings.SWEEP_CREATED_AFTER_S = -5
    assert tasks.sweep_created_orders() == 1
    order_in(order_id, "pending")
