"""The order and refund state machines: exactly the transitions of API.md, nothing else."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from django_fsm import TransitionNotAllowed

from payments import services
from payments.models import Order, OrderStatus, Refund, RefundState

NOW = dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.UTC)

ORDER_ARGS: dict[str, dict[str, Any]] = {
    "mark_pending": {"pay_url": "https://pay.example/qr"},
    "mark_succeeded": {"paid_at": NOW, "channel_trade_no": "t1"},
    "mark_failed": {"code": "channel_refused", "message": "no"},
    "mark_closed": {},
    "accept_late_payment": {"paid_at": NOW, "channel_trade_no": "t1"},
    "record_partial_refund": {"amount": 1},
    "record_full_refund": {"amount": 1},
    "record_late_payment_refund": {"amount": 1},
}
OS = OrderStatus
ORDER_ALLOWED: dict[tuple[str, str], str] = {
    (OS.CREATED, "mark_pending"): OS.PENDING,
    (OS.CREATED, "mark_succeeded"): OS.SUCCEEDED,
    (OS.CREATED, "mark_failed"): OS.FAILED,
    (OS.CREATED, "mark_closed"): OS.CLOSED,
    (OS.PENDING, "mark_succeeded"): OS.SUCCEEDED,
    (OS.PENDING, "mark_failed"): OS.FAILED,
    (OS.PENDING, "mark_closed"): OS.CLOSED,
    # API.md: money that arrives for a closed or failed order is accepted (or refunded) by ops' explicit decision.
    (OS.CLOSED, "accept_late_payment"): OS.SUCCEEDED,
    (OS.FAILED, "accept_late_payment"): OS.SUCCEEDED,
    (OS.SUCCEEDED, "record_partial_refund"): OS.PARTIALLY_REFUNDED,
    (OS.SUCCEEDED, "record_full_refund"): OS.REFUNDED,
    (OS.PARTIALLY_REFUNDED, "record_partial_refund"): OS.PARTIALLY_REFUNDED,
    (OS.PARTIALLY_REFUNDED, "record_full_refund"): OS.REFUNDED,
    # Ops refunded the late payment: the money goes back, and the order stays as it was.
    (OS.CLOSED, "record_late_payment_refund"): OS.CLOSED,
    (OS.FAILED, "record_late_payment_refund"): OS.FAILED,
}

REFUND_ARGS: dict[str, dict[str, Any]] = {
    "mark_processing": {},
    "mark_succeeded": {"succeeded_at": NOW},
    "mark_failed": {"code": "channel_refund_failed", "message": "no"},
}
R = RefundState
REFUND_ALLOWED: dict[tuple[str, str], str] = {
    (R.PENDING, "mark_processing"): R.PROCESSING,
    (R.PENDING, "mark_failed"): R.FAILED,
    (R.PROCESSING, "mark_succeeded"): R.SUCCEEDED,
    (R.PROCESSING, "mark_failed"): R.FAILED,
}


@pytest.mark.parametrize("model, table", [(Order, ORDER_ARGS), (Refund, REFUND_ARGS)])
def test_every_transition_is_in_the_table(model: type[Order | Refund], table: dict) -> None:
    declared = {t.name for t in model._meta.get_field("status").get_all_transitions(model)}
    assert declared == set(table)


@pytest.mark.parametrize("state, transition", list(itertools.product(OS.values, ORDER_ARGS)))
def test_order_transition(state: str, transition: str) -> None:
    order = Order(status=state, amount=1000)
    fire = getattr(order, transition)
    target = ORDER_ALLOWED.get((state, transition))
    if target is None:
        with pytest.raises(TransitionNotAllowed):
            fire(**ORDER_ARGS[transition])
        assert order.status == state
    else:
        fire(**ORDER_ARGS[transition])
        assert order.status == target


@pytest.mark.parametrize("state, transition", list(itertools.product(R.values, REFUND_ARGS)))
def test_refund_transition(state: str, transition: str) -> None:
    refund = Refund(status=state, amount=100)
    fire = getattr(refund, transition)
    target = REFUND_ALLOWED.get((state, transition))
    if target is None:
        with pytest.raises(TransitionNotAllowed):
            fire(**REFUND_ARGS[transition])
        assert refund.status == state
    else:
        fire(**REFUND_ARGS[transition])
        assert refund.status == target


def test_order_status_cannot_be_assigned(merchant_a) -> None:
    created, _ = services.order_create(
        merchant=merchant_a.merchant, merchant_order_no="FSM-1", amount=100, currency="CNY", channel="sandbox"
    )
    order = Order.objects.get(pk=created.pk)
    with pytest.raises(AttributeError):
        order.status = OS.SUCCEEDED
    order.refresh_from_db()
    assert order.status == OS.CREATED


def test_refund_status_cannot_be_assigned(merchant_a, paid_order) -> None:
    order = paid_order(merchant_a)
    created, _ = services.refund_request(order_id=order.pk, merchant_refund_no="R-1", amount=100)
    refund = Refund.objects.get(pk=created.pk)
    with pytest.raises(AttributeError):
        refund.status = R.SUCCEEDED
    assert Refund.objects.get(pk=created.pk).status == R.PENDING
