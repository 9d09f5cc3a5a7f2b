"""How the engine applies channel answers it cannot act on directly: events it does not model, stuck refunds."""

from __future__ import annotations

import json
import time

import pytest
from django.conf import settings

from channels.base import RefundResult, RefundStatus, TradeResult, TradeStatus
from channels.sandbox import signing
from payments import services
from payments.models import ChannelNotification


def signed_sandbox_notification(message: dict) -> tuple[dict[str, str], bytes]:
    body = json.dumps(message).encode()
    timestamp = str(int(time.time()))
    return {
        signing.TIMESTAMP_HEADER: timestamp,
        signing.SIGNATURE_HEADER: signing.sign_message(settings.SANDBOX_SECRET, timestamp, body),
    }, body


def test_a_verified_event_we_do_not_model_is_acknowledged_and_changes_nothing(merchant_a, paid_order) -> None:
    order = paid_order(merchant_a)
    headers, body = signed_sandbox_notification(
        {"id": "sbx_n_1", "type": "trade.disputed", "created_at": "2026-11-27T00:00:00Z",
         "data": {"out_trade_no": order.public_id}}
    )
    row, accepted = services.notification_receive(channel="sandbox", headers=headers, body=body)
    assert accepted  # so the channel stops resending it
    services.notification_apply(notification_id=row.pk)
    row.refresh_from_db()
    order.refresh_from_db()
    assert (row.state, row.reason) == (ChannelNotification.State.PROCESSED, "")
    assert order.status == "succeeded"


def test_a_refund_stuck_at_the_channel_stays_processing_and_is_flagged(merchant_a, paid_order) -> None:
    order = paid_order(merchant_a, amount=1000)
    refund, _ = services.refund_request(order_id=order.pk, merchant_refund_no="R-1", amount=400)
    stuck = RefundResult(refund.public_id, RefundStatus.PROCESSING, amount=400, failure_code="refund_abnormal")
    services.refund_apply_result(refund_id=refund.pk, result=stuck, source="callback")
    refund.refresh_from_db()
    assert (refund.status, refund.attention) == ("processing", "refund_abnormal")
    # Its amount stays committed: a second refund cannot take it.
    again, _ = services.refund_request(order_id=order.pk, merchant_refund_no="R-2", amount=600)
    assert again.amount == 600
    with pytest.raises(services.RefundExceedsAmount):
        services.refund_request(order_id=order.pk, merchant_refund_no="R-3", amount=1)


def test_a_waiting_trade_without_its_pay_url_leaves_a_created_order_to_the_charge(merchant_a) -> None:
    # e.g. Alipay's WAIT_BUYER_PAY notification racing the create's answer: pending needs a payable link.
    order, _ = services.order_create(merchant=merchant_a.merchant, merchant_order_no="W-1", amount=1000,
                                     currency="CNY", channel="sandbox")
    waiting = TradeResult(out_trade_no=order.public_id, status=TradeStatus.WAITING, amount=1000, currency="CNY")
    assert services.order_apply_trade(order_id=order.pk, trade=waiting, source="callback").status == "created"
    with_link = TradeResult(out_trade_no=order.public_id, status=TradeStatus.WAITING, amount=1000, currency="CNY",
                            pay_url="http://127.0.0.1:8101/pay/x")
    order = services.order_apply_trade(order_id=order.pk, trade=with_link, source="worker")
    assert (order.status, order.pay_url) == ("pending", "http://127.0.0.1:8101/pay/x")
