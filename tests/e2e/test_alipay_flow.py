"""Alipay through every real part: API → Redis → worker → Alipay simulator → notification → worker."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from channels.alipay import signing
from channels.registry import get_channel
from payments import tasks
from payments.models import ChannelNotification, Event, Order, Refund, TransitionLog
from tests.conftest import make_actor
from tests.e2e import alipay_fixtures, orders
from tests.e2e.conftest import Simulator, wait_until
from tests.e2e.orders import order_in, pay

pytestmark = pytest.mark.e2e
alipay = alipay_fixtures.alipay  # the per-test fixture: a clean simulator and broker


def create_order(client, number: str = "ALI-1", amount: int = 1000) -> dict:
    return orders.create_order(client, number, amount, channel="alipay")


def pending_order(client, number: str = "ALI-1", amount: int = 1000) -> Order:
    return order_in(create_order(client, number, amount)["id"], "pending")


def refund(client, order: Order, number: str, amount: int) -> None:
    response = client.post(f"/api/v1/orders/{order.public_id}/refunds",
                           {"merchant_refund_no": number, "amount": amount}, format="json")
    assert response.status_code == 201, response.json()


def transitions(order: Order, name: str) -> int:
    return TransitionLog.objects.filter(object_id=order.public_id, transition=name).count()


def test_an_order_is_paid_by_scanning_the_code_and_notified(alipay: Simulator) -> None:
    client = make_actor("Alipay merchant").client()
    order = pending_order(client)
    assert order.pay_url.startswith(f"{alipay.base_url}/qr/")
    assert pay(order).status_code == 200
    order = order_in(order.public_id, "succeeded")
    assert order.paid_at is not None and len(order.channel_trade_no) == 28
    wait_until(lambda: any(n["acknowledged"] for n in alipay.trade(order.public_id)["notifications"]),
               what="Alipay to hear `success`")
    trade = alipay.trade(order.public_id)
    assert (trade["status"], trade["amount"], trade["create_calls"]) == ("TRADE_SUCCESS", 1000, 1)
    assert ChannelNotification.objects.get(order=order).state == "processed"
    assert list(TransitionLog.objects.filter(object_id=order.public_id).values_list("to_state", flat=True)) == [
        "created", "pending", "succeeded",
    ]


def test_close_of_a_scanned_unpaid_order_is_confirmed_with_alipay(alipay: Simulator) -> None:
    client = make_actor("Alipay merchant").client()
    order = pending_order(client)
    httpx.get(order.pay_url).raise_for_status()  # the payer scans: now the trade exists at Alipay
    response = client.post(f"/api/v1/orders/{order.public_id}/close")
    assert response.status_code == 200 and response.json()["status"] == "closed"
    assert alipay.trade(order.public_id)["status"] == "TRADE_CLOSED"
    assert pay(order).status_code == 409


def test_a_payment_after_closing_an_unscanned_code_is_kept_for_ops(alipay: Simulator) -> None:
    # Alipay knows no trade before the code is scanned, so the close cannot be confirmed and the code stays
    # payable until its time_expire. A payment that still arrives is recorded and flagged, never dropped.
    client = make_actor("Alipay merchant").client()
    order = pending_order(client)
    response = client.post(f"/api/v1/orders/{order.public_id}/close")
    assert response.status_code == 200 and response.json()["status"] == "closed"
    assert pay(order).status_code == 200
    order = wait_until(lambda: Order.objects.filter(public_id=order.public_id).exclude(attention="").first(),
                       what="the late payment to be flagged")
    assert (order.status, order.attention) == ("closed", "paid_after_closed")
    assert order.channel_trade_no


def test_partial_and_full_refunds(alipay: Simulator) -> None:
    client = make_actor("Alipay merchant").client()
    order = pending_order(client)
    pay(order)
    order = order_in(order.public_id, "succeeded")
    refund(client, order, "R-1", 400)
    order = order_in(order.public_id, "partially_refunded")
    refund(client, order, "R-2", 600)
    order = order_in(order.public_id, "refunded")
    wait_until(lambda: Refund.objects.filter(order=order, status="succeeded").count() == 2, what="both refunds")
    assert order.amount_refunded == 1000
    trade = alipay.trade(order.public_id)
    assert sorted(r["amount"] for r in trade["refunds"]) == [400, 600]
    assert trade["status"] == "TRADE_CLOSED"  # Alipay closes a fully refunded trade
    # Each refund also caused a trade_status_sync; the sync answer and the notification agree, one transition each.
    wait_until(lambda: ChannelNotification.objects.filter(order=order, state="processed").count() == 3,
               what="the payment and refund notifications")
    assert TransitionLog.objects.filter(object_type="refund", transition="mark_succeeded",
                                        object_id__in=order.refunds.values("public_id")).count() == 2
    types = list(Event.objects.filter(order=order).order_by("id").values_list("type", flat=True))
    assert types == ["order.pending", "order.succeeded", "refund.succeeded", "refund.succeeded"]


def test_an_unanswered_create_is_queried_and_alipay_deduplicates_the_retry(alipay: Simulator) -> None:
    client = make_actor("Alipay merchant").client()
    alipay.fault("create", "timeout_after_processing", count=1)
    order = pending_order(client)
    trade = alipay.trade(order.public_id)
    # The query found no trade (the code was never scanned), so the retry created again with the same
    # out_trade_no, and Alipay answered the same QR code: one trade.
    assert trade["create_calls"] == 2 and trade["status"] == "WAIT_BUYER_PAY"
    pay(order)
    order_in(order.public_id, "succeeded")
    assert alipay.trade(order.public_id)["status"] == "TRADE_SUCCESS"


def test_an_unanswered_refund_is_queried_not_resent(alipay: Simulator) -> None:
    client = make_actor("Alipay merchant").client()
    order = pending_order(client)
    pay(order)
    order_in(order.public_id, "succeeded")
    alipay.fault("refund", "timeout_after_processing", count=1)
    refund(client, order, "R-1", 1000)
    order = order_in(order.public_id, "refunded")
    assert [r["amount"] for r in alipay.trade(order.public_id)["refunds"]] == [1000]
    assert transitions(order, "record_full_refund") == 1


def test_gateway_errors_are_retried_without_a_second_trade(alipay: Simulator) -> None:
    client = make_actor("Alipay merchant").client()
    alipay.fault("create", "http_500", count=1)
    alipay.fault("create", "rate_limit", count=1)
    order = pending_order(client)
    assert alipay.trade(order.public_id)["create_calls"] == 3


def test_a_duplicated_notification_makes_one_transition(alipay: Simulator) -> None:
    client = make_actor("Alipay merchant").client()
    order = pending_order(client)
    alipay.fault("notify", "duplicate_notify", count=1)
    pay(order)
    order = order_in(order.public_id, "succeeded")
    wait_until(lambda: len(alipay.trade(order.public_id)["notifications"]) >= 2, what="both copies")
    assert ChannelNotification.objects.filter(order=order).count() == 1
    assert transitions(order, "mark_succeeded") == 1
    assert Event.objects.filter(order=order, type="order.succeeded").count() == 1


def test_a_payment_notification_arriving_after_the_refunds_changes_nothing(alipay: Simulator, settings) -> None:
    client = make_actor("Alipay merchant").client()
    order = pending_order(client)
    alipay.http.post("/_sim/clock", json={"speed": 0.1}).raise_for_status()  # the held notification waits 20 s
    alipay.fault("notify", "out_of_order_notify", count=1)
    pay(order)
    settings.SWEEP_PENDING_QUERY_AFTER_S = -5
    assert tasks.sweep_pending_orders() >= 1  # we hear nothing yet: the query settles the order
    order = order_in(order.public_id, "succeeded")
    refund(client, order, "R-1", 300)
    order = order_in(order.public_id, "partially_refunded")
    # The refund's notification goes out first; the payment's follows it.
    wait_until(lambda: ChannelNotification.objects.filter(order=order, state="processed").count() == 2,
               what="both notifications, out of order")
    first, second = ChannelNotification.objects.filter(order=order).order_by("id")
    assert first.payload is not None and second.payload is not None
    assert first.payload["refund"] and second.payload["trade"]
    order.refresh_from_db()
    assert (order.status, order.amount_refunded) == ("partially_refunded", 300)
    assert transitions(order, "mark_succeeded") == 1


def test_a_notification_with_a_bad_signature_is_rejected_and_the_retry_applies(alipay: Simulator) -> None:
    client = make_actor("Alipay merchant").client()
    order = pending_order(client)
    alipay.fault("notify", "bad_signature_notify", count=1)
    pay(order)
    order = order_in(order.public_id, "succeeded")
    rejected = ChannelNotification.objects.get(channel="alipay", state="rejected")
    assert rejected.reason == "bad_signature" and rejected.channel_notification_id is None
    assert transitions(order, "mark_succeeded") == 1


def test_a_forged_notification_changes_nothing(alipay: Simulator, live_server) -> None:
    client = make_actor("Alipay merchant").client()
    order = pending_order(client)
    body = {"notify_id": "forged", "app_id": "2021000000000042", "out_trade_no": order.public_id, "trade_no": "1",
            "trade_status": "TRADE_SUCCESS", "total_amount": "10.00", "sign_type": "RSA2", "sign": "Zm9yZ2Vk"}
    answer = httpx.post(f"{live_server.url}/callbacks/alipay", data=body)
    assert answer.content != b"success"
    assert ChannelNotification.objects.get(channel="alipay").reason == "bad_signature"
    order.refresh_from_db()
    assert order.status == "pending"


def test_a_tampered_amount_is_rejected_and_the_query_settles_the_order(alipay: Simulator, settings) -> None:
    client = make_actor("Alipay merchant").client()
    order = pending_order(client)
    alipay.fault("notify", "tamper_amount_notify", count=1)
    pay(order)
    wait_until(lambda: ChannelNotification.objects.filter(order=order, reason="amount_mismatch").exists(),
               what="the tampered notification to be rejected")
    order.refresh_from_db()
    assert order.status == "pending"
    settings.SWEEP_PENDING_QUERY_AFTER_S = -5
    assert tasks.sweep_pending_orders() >= 1
    order_in(order.public_id, "succeeded")
    assert transitions(order, "mark_succeeded") == 1


def test_the_days_bill_lists_our_payments_and_refunds(alipay: Simulator) -> None:
    client = make_actor("Alipay merchant").client()
    order = pending_order(client)
    pay(order)
    order = order_in(order.public_id, "succeeded")
    refund(client, order, "R-1", 250)
    order = order_in(order.public_id, "partially_refunded")
    rows = list(get_channel("alipay").download_bill(day=dt.datetime.now(signing.CST).date()))
    ours = {(r.kind, r.amount, r.out_refund_no) for r in rows if r.out_trade_no == order.public_id}
    refund_no = order.refunds.get().public_id
    assert ours == {("payment", 1000, None), ("refund", 250, refund_no)}
    assert all(r.channel_trade_no == order.channel_trade_no for r in rows if r.out_trade_no == order.public_id)
