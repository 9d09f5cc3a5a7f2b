"""Money that arrives for an order already closed: recorded, flagged, then accepted or refunded by ops."""

from __future__ import annotations

import pytest

from channels.base import RefundResult, RefundStatus, TradeResult, TradeStatus
from payments import services
from payments.models import Event, TransitionLog


@pytest.fixture
def late_paid_order(merchant_a):
    order, _ = services.order_create(merchant=merchant_a.merchant, merchant_order_no="LATE-1", amount=1000,
                                     currency="CNY", channel="sandbox")
    closed = TradeResult(order.public_id, TradeStatus.CLOSED, amount=1000, currency="CNY")
    services.order_apply_trade(order_id=order.pk, trade=closed, source="sweep")
    paid = TradeResult(order.public_id, TradeStatus.SUCCEEDED, amount=1000, currency="CNY", channel_trade_no="T-9")
    order = services.order_apply_trade(order_id=order.pk, trade=paid, source="callback")
    assert (order.status, order.attention, order.channel_trade_no) == ("closed", "paid_after_closed", "T-9")
    return order


def test_accepting_a_late_payment_makes_the_order_succeeded_and_logs_who_decided(late_paid_order) -> None:
    order = services.order_accept_late_payment(order_id=late_paid_order.pk, by="ops_user")
    assert (order.status, order.attention) == ("succeeded", "")
    log = TransitionLog.objects.get(object_id=order.public_id, transition="accept_late_payment")
    assert (log.from_state, log.source, log.detail["by"]) == ("closed", "admin", "ops_user")
    assert Event.objects.filter(order=order, type="order.succeeded").count() == 1
    with pytest.raises(services.OrderStateError):  # a decision is made once
        services.order_accept_late_payment(order_id=order.pk, by="ops_user")


def test_refunding_a_late_payment_returns_it_in_full_and_leaves_the_order_closed(late_paid_order) -> None:
    refund = services.order_refund_late_payment(order_id=late_paid_order.pk, by="ops_user")
    assert (refund.amount, refund.status) == (1000, "pending")
    done = RefundResult(refund.public_id, RefundStatus.SUCCEEDED, amount=1000)
    services.refund_apply_result(refund_id=refund.pk, result=done, source="worker")
    refund.refresh_from_db()
    late_paid_order.refresh_from_db()
    assert refund.status == "succeeded"
    assert (late_paid_order.status, late_paid_order.amount_refunded, late_paid_order.attention) == ("closed", 1000, "")
    with pytest.raises(services.OrderStateError):
        services.order_accept_late_payment(order_id=late_paid_order.pk, by="ops_user")


def test_no_decision_on_an_order_without_a_late_payment(merchant_a) -> None:
    order, _ = services.order_create(merchant=merchant_a.merchant, merchant_order_no="N-1", amount=1000,
                                     currency="CNY", channel="sandbox")
    with pytest.raises(services.OrderStateError):
        services.order_refund_late_payment(order_id=order.pk, by="ops_user")


def test_ops_decide_from_the_admin(late_paid_order, admin_client) -> None:
    response = admin_client.post(
        "/admin/payments/order/",
        {"action": "accept_late_payment", "_selected_action": [late_paid_order.pk]},
        follow=True,
    )
    assert response.status_code == 200
    late_paid_order.refresh_from_db()
    assert late_paid_order.status == "succeeded"
    assert TransitionLog.objects.get(transition="accept_late_payment").detail["by"] == "admin"
