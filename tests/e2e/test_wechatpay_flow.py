"""WeChat Pay end to end: API → Redis → worker → WeChat Pay simulator → signed, encrypted callback → worker."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings

from channels.registry import get_channel
from channels.wechatpay import signing
from channels.wechatpay.adapter import SHANGHAI
from payments.models import ChannelNotification, Event, Order, Refund, TransitionLog
from tests.conftest import make_actor
from tests.e2e import orders
from tests.e2e.conftest import Simulator, wait_until
from tests.e2e.orders import order_in, pay

pytestmark = pytest.mark.e2e


@pytest.fixture
def wx(e2e: Simulator, wechatpay_sim: Simulator) -> Iterator[Simulator]:
    """A clean WeChat Pay simulator (clock fast) for one test; ``e2e`` already cleaned the broker."""
    wechatpay_sim.reset()
    yield wechatpay_sim
    wechatpay_sim.reset()  # nothing it still meant to send arrives while the test's rows are flushed (Simulator.reset)


def create_order(client, number: str = "WX-1", amount: int = 1000) -> dict:
    return orders.create_order(client, number, amount, channel="wechatpay", description="Coffee beans 1kg")


def paid_order(client, sim: Simulator, amount: int = 1000) -> Order:
    order = order_in(create_order(client, amount=amount)["id"], "pending")
    pay(order)
    return order_in(order.public_id, "succeeded")


def request_refund(client, order: Order, number: str, amount: int) -> None:
    response = client.post(f"/api/v1/orders/{order.public_id}/refunds",
                           {"merchant_refund_no": number, "amount": amount}, format="json")
    assert response.status_code == 201, response.json()


def transitions(object_id: str, name: str) -> int:
    return TransitionLog.objects.filter(object_id=object_id, transition=name).count()


def test_order_is_paid_by_notification_and_refunded_by_callbacks(wx: Simulator) -> None:
    client = make_actor("WX merchant").client()
    created = create_order(client)
    order = order_in(created["id"], "pending")
    assert order.pay_url.startswith(f"{wx.base_url}/wxpay/bizpayurl?pr=")  # the code_url
    pay(order)
    order = order_in(order.public_id, "succeeded")
    assert order.paid_at is not None and order.channel_trade_no.startswith("4200")
    assert TransitionLog.objects.get(object_id=order.public_id, transition="mark_succeeded").source == "callback"

    request_refund(client, order, "R-1", 400)
    order = order_in(order.public_id, "partially_refunded")
    request_refund(client, order, "R-2", 600)
    order = order_in(order.public_id, "refunded")
    assert order.amount_refunded == 1000
    for refund in Refund.objects.filter(order=order):
        def succeeded(pk: int = refund.pk) -> bool:
            return Refund.objects.get(pk=pk).status == "succeeded"

        wait_until(succeeded, what="the refund")
        # Accepted PROCESSING by the channel; its REFUND.SUCCESS notification completed it.
        assert transitions(refund.public_id, "mark_processing") == 1
        assert TransitionLog.objects.get(object_id=refund.public_id, transition="mark_succeeded").source == "callback"

    trade = wx.trade(order.public_id)
    assert trade["status"] == "REFUND" and trade["create_calls"] == 1
    assert sorted((r["amount"], r["status"]) for r in trade["refunds"]) == [(400, "SUCCESS"), (600, "SUCCESS")]
    assert ChannelNotification.objects.filter(channel="wechatpay", order=order, state="processed").count() == 3
    types = list(Event.objects.filter(order=order).order_by("id").values_list("type", flat=True))
    assert types == ["order.pending", "order.succeeded", "refund.succeeded", "refund.succeeded"]


def test_close_of_an_unpaid_order(wx: Simulator) -> None:
    client = make_actor("WX merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    response = client.post(f"/api/v1/orders/{order.public_id}/close")
    assert response.status_code == 200 and response.json()["status"] == "closed"
    assert wx.trade(order.public_id)["status"] == "CLOSED"
    assert httpx.post(order.pay_url, data={"action": "pay"}).status_code == 409


def test_close_of_an_order_paid_at_the_channel_records_the_payment(wx: Simulator) -> None:
    client = make_actor("WX merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    wx.fault("notify", "drop_notify")  # we hear nothing of the payment
    pay(order)
    response = client.post(f"/api/v1/orders/{order.public_id}/close")
    assert response.status_code == 409 and response.json()["error"]["code"] == "order_state"
    order.refresh_from_db()
    assert order.status == "succeeded"


def test_bill_download_is_parsed_into_rows(wx: Simulator) -> None:
    client = make_actor("WX merchant").client()
    order = paid_order(client, wx, amount=1050)
    request_refund(client, order, "R-1", 50)
    order_in(order.public_id, "partially_refunded")
    refund = Refund.objects.get(order=order)
    rows = list(get_channel("wechatpay").download_bill(day=dt.datetime.now(SHANGHAI).date()))
    assert [(r.kind, r.out_trade_no, r.amount, r.currency, r.status) for r in rows if r.kind == "payment"] == [
        ("payment", order.public_id, 1050, "CNY", "succeeded")]
    assert [(r.kind, r.out_refund_no, r.amount) for r in rows if r.kind == "refund"] == [
        ("refund", refund.public_id, 50)]


def test_unanswered_create_is_queried_and_makes_one_trade(wx: Simulator) -> None:
    client = make_actor("WX merchant").client()
    wx.fault("create", "timeout_after_processing", count=1)
    order = order_in(create_order(client)["id"], "pending")
    trade = wx.trade(order.public_id)
    # The query found the trade unpaid; the identical create then answered its code_url. One trade.
    assert trade["status"] == "NOTPAY" and trade["create_calls"] == 2
    assert order.pay_url
    pay(order)
    order_in(order.public_id, "succeeded")
    assert transitions(order.public_id, "mark_succeeded") == 1


def test_unanswered_refund_is_queried_not_resent(wx: Simulator) -> None:
    client = make_actor("WX merchant").client()
    order = paid_order(client, wx)
    wx.fault("refund", "timeout_after_processing", count=1)
    request_refund(client, order, "R-1", 1000)
    order = order_in(order.public_id, "refunded")
    assert [(r["amount"], r["status"]) for r in wx.trade(order.public_id)["refunds"]] == [(1000, "SUCCESS")]
    assert transitions(order.public_id, "record_full_refund") == 1


def test_duplicated_notification_makes_one_transition(wx: Simulator) -> None:
    client = make_actor("WX merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    wx.fault("notify", "duplicate_notify", count=1)
    pay(order)
    order = order_in(order.public_id, "succeeded")
    wait_until(lambda: len(wx.trade(order.public_id)["notifications"]) >= 2, what="both deliveries")
    assert ChannelNotification.objects.filter(order=order).count() == 1
    assert transitions(order.public_id, "mark_succeeded") == 1
    assert Event.objects.filter(order=order, type="order.succeeded").count() == 1


def test_bad_signature_is_rejected_and_the_channels_retry_applies(wx: Simulator) -> None:
    client = make_actor("WX merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    wx.fault("notify", "bad_signature_notify", count=1)
    pay(order)
    order = order_in(order.public_id, "succeeded")
    rejected = ChannelNotification.objects.get(channel="wechatpay", state="rejected")
    assert rejected.reason == "bad_signature" and rejected.channel_notification_id is None
    attempts = wx.trade(order.public_id)["notifications"]
    assert [a["acknowledged"] for a in attempts] == [False, True]  # answered FAIL, then retried on schedule
    assert transitions(order.public_id, "mark_succeeded") == 1


def test_tampered_amount_is_rejected_and_the_query_sweep_settles_the_order(wx: Simulator, settings) -> None:
    from payments import tasks

    client = make_actor("WX merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    wx.fault("notify", "tamper_amount_notify", count=1)
    pay(order)
    wait_until(lambda: ChannelNotification.objects.filter(order=order, reason="amount_mismatch").exists(),
               what="the tampered notification to be rejected")
    assert ChannelNotification.objects.get(order=order).state == "rejected"
    order.refresh_from_db()
    assert order.status == "pending"
    settings.SWEEP_PENDING_QUERY_AFTER_S = -5
    assert tasks.sweep_pending_orders() >= 1
    order_in(order.public_id, "succeeded")
    assert transitions(order.public_id, "mark_succeeded") == 1


def test_refund_notifications_out_of_order(wx: Simulator) -> None:
    client = make_actor("WX merchant").client()
    order = paid_order(client, wx)
    # Real time, so that the first refund's notification is still held when the second one goes out.
    wx.http.post("/_sim/clock", json={"speed": 1}).raise_for_status()
    wx.fault("notify", "out_of_order_notify", count=1)
    request_refund(client, order, "R-1", 300)
    request_refund(client, order, "R-2", 700)
    order = order_in(order.public_id, "refunded")
    first, second = Refund.objects.filter(order=order).order_by("amount")
    notifications = ChannelNotification.objects.filter(order=order).order_by("id")
    arrived = [n.payload["refund"]["out_refund_no"] for n in notifications if n.payload and n.payload["refund"]]
    assert arrived == [second.public_id, first.public_id]
    for refund in (first, second):
        assert transitions(refund.public_id, "mark_succeeded") == 1
    assert transitions(order.public_id, "record_partial_refund") == 1
    assert transitions(order.public_id, "record_full_refund") == 1


def test_forged_notification_changes_nothing(wx: Simulator, live_server) -> None:
    client = make_actor("WX merchant").client()
    order = order_in(create_order(client)["id"], "pending")
    resource = {"mchid": settings.WECHATPAY_MCHID, "out_trade_no": order.public_id, "trade_state": "SUCCESS",
                "transaction_id": "4200000000000000000000000001", "success_time": "2026-01-01T08:00:00+08:00",
                "amount": {"total": 1000, "currency": "CNY"}}
    sealed = signing.encrypt(settings.WECHATPAY_APIV3_KEY, json.dumps(resource).encode(), "transaction")
    body = json.dumps({"id": "EV-forged", "event_type": "TRANSACTION.SUCCESS", "resource_type": "encrypt-resource",
                       "resource": {"original_type": "transaction", **sealed}}).encode()
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    headers = signing.signed_headers(forger, settings.WECHATPAY_PLATFORM_PUBLIC_KEY_ID, body)
    answer = httpx.post(f"{live_server.url}/callbacks/wechatpay", content=body,
                        headers={**headers, "Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["code"] == "FAIL"
    rejected = ChannelNotification.objects.get(channel="wechatpay", reason="bad_signature")
    assert rejected.state == "rejected" and "Wechatpay-Signature" not in rejected.headers
    time.sleep(0.5)
    order.refresh_from_db()
    assert order.status == "pending"
