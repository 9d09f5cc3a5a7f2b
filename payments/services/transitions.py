"""The machinery every change of money state goes through, shared by the order, refund and notification services.

A transition is fired on a row the caller holds locked (``select_for_update``) inside the caller's transaction,
so that everything it causes commits with it or not at all: the new state, its log row, the event merchants
hear about, and (after commit) the metric.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from functools import lru_cache
from typing import Any

from django.db import transaction

from payments import db, metrics, outbox
from payments.models import Event, Merchant, Order, OrderStatus, Refund, RefundState, TransitionLog
from payments.observability import bind, current_trace_id
from payments.representations import order_json, refund_json
from payments.services.webhooks import new_delivery

log = logging.getLogger(__name__)

Source = TransitionLog.Source

# Order and refund states that merchants hear about as events.
ORDER_EVENTS = {OrderStatus.PENDING, OrderStatus.SUCCEEDED, OrderStatus.FAILED, OrderStatus.CLOSED}
REFUND_EVENTS = {RefundState.SUCCEEDED, RefundState.FAILED}

# The staff user on whose behalf the current code runs (an admin action): written as "by" in the detail of
# every log row written meanwhile, whichever service writes it.
_ACTOR: ContextVar[str] = ContextVar("payments_actor", default="")


@contextlib.contextmanager
def acting_as(by: str) -> Iterator[None]:
    """Log every transition fired inside the block as done by ``by`` (a staff user's name)."""
    token = _ACTOR.set(by)
    try:
        yield
    finally:
        _ACTOR.reset(token)


def fire(obj: Order | Refund, name: str, *, source: str, detail: dict | None = None, **kwargs: Any) -> None:
    """Fire transition ``name`` on a row the caller holds locked, with all that a state change causes: the row,
    its log row, its event and the event's webhook delivery (enqueued) are one statement (``payments.db``)."""
    before = obj.status
    getattr(obj, name)(**kwargs)
    rows = db.Statement()
    rows.update(obj)  # every column, as save() would: the caller may have changed others before the transition
    rows.insert(log_row(obj, transition=name, from_state=before, source=source, detail=detail))
    delivery = None
    if obj.status != before:
        # A transition that keeps the state (a late payment's refund on a closed order) is logged, but it
        # is no news for the merchant and enters no state.
        event = new_event(obj)
        if event is not None:
            rows.insert(event)
            delivery = new_delivery(event, obj if isinstance(obj, Order) else obj.order)
            if delivery is not None:
                rows.insert(delivery)
    # No savepoint: a failure here aborts the caller's transaction, which then rolls back as a whole.
    rows.run(enqueue=outbox.DELIVER_WEBHOOK if delivery else None, enqueue_for=delivery, savepoint=False)
    log.info(
        "%s %s: %s -> %s", kind_of(obj), obj.public_id, before, obj.status,
        extra={f"{kind_of(obj)}_id": obj.public_id, "transition": name, "source": source, "key_path": True},
    )
    if obj.status != before:
        count_on_commit(obj)


def kind_of(obj: Order | Refund) -> str:
    return "order" if isinstance(obj, Order) else "refund"


def log_row(
    obj: Order | Refund, *, transition: str, from_state: str, source: str, detail: dict | None = None
) -> TransitionLog:
    """The transition log row of a change of ``obj`` (not saved: it is written in the statement of the change)."""
    if by := _ACTOR.get():
        detail = {"by": by, **(detail or {})}
    return TransitionLog(
        object_type=kind_of(obj),
        object_id=obj.public_id,
        transition=transition,
        from_state=from_state,
        to_state=obj.status,
        source=source,
        trace_id=current_trace_id(),
        detail=detail or {},
    )


def creation_log_row(obj: Order | Refund, source: str) -> TransitionLog:
    """The log row of a new order or refund: the state it enters, from none."""
    return log_row(obj, transition="create", from_state="", source=source)


def log_created(obj: Order | Refund, source: str) -> None:
    """The log line of a new order or refund (its row is written by the caller)."""
    log.info("%s %s created", kind_of(obj), obj.public_id,
             extra={"transition": "create", "source": source, "key_path": True})


def new_event(obj: Order | Refund) -> Event | None:
    """The event (not saved) merchants hear about for the state ``obj`` entered, if it is one they hear about."""
    if isinstance(obj, Order) and obj.status in ORDER_EVENTS:
        return Event(merchant_id=obj.merchant_id, type=f"order.{obj.status}", order=obj, data=order_json(obj))
    if isinstance(obj, Refund) and obj.status in REFUND_EVENTS:
        return Event(merchant_id=obj.order.merchant_id, type=f"refund.{obj.status}", order=obj.order, refund=obj,
                     data=refund_json(obj))
    return None


def count_on_commit(obj: Order | Refund) -> None:
    """Count the status the row entered, once it is committed (a rolled-back transition never happened)."""
    if isinstance(obj, Order):
        counter = metrics.ORDERS.labels(channel=obj.channel, status=obj.status)
    else:
        counter = metrics.REFUNDS.labels(channel=obj.order.channel, status=obj.status)
    transaction.on_commit(counter.inc)


def flag(obj: Order | Refund, reason: str) -> None:
    """Leave the row visibly needing ops, and say so loudly."""
    obj.attention = reason[:64]
    obj.save(update_fields=["attention", "updated_at"])
    ids = {f"{kind_of(obj)}_id": obj.public_id}
    log.error("%s needs attention: %s", obj.public_id, reason, extra={**ids, "reason": reason, "key_path": True})


def locked_order(order_id: int) -> Order:
    order = db.locked(Order, pk=order_id)
    if order is None:
        raise Order.DoesNotExist(f"no order {order_id}")
    return order


@lru_cache(maxsize=10_000)
def _merchant_public_id(merchant_pk: int) -> str:
    # Public ids never change: one query per merchant per process, not one per task.
    return Merchant.objects.values_list("public_id", flat=True).get(pk=merchant_pk)


def bind_order(order: Order) -> None:
    """Name the order on every log line of the current task or request."""
    bind(order_id=order.public_id, channel=order.channel, merchant_id=_merchant_public_id(order.merchant_id))
