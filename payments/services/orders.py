"""Orders: create, charge at the channel, apply what the channel says, query, close, expire, and ops' decisions.

Every write is a short transaction on a row locked with ``select_for_update``. Channel calls happen between
transactions, never inside one: record the attempt and commit, call the channel, then apply the answer in a
new transaction that re-reads the row and checks that the state is still the one the answer applies to.
Every function here may run twice (tasks are re-delivered); a repeat finds the work done and returns.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from channels.base import Channel, Refused, Retryable, TradeResult, TradeStatus, UnknownOutcome
from channels.registry import channel_for_account, channel_for_new_charge
from payments import db, outbox
from payments.idempotency import Claim, KeyAnswered, is_key_conflict
from payments.models import OPEN_ORDER_STATES, Merchant, Order, OrderStatus
from payments.observability import bind, current_trace_id
from payments.services.errors import DuplicateError, OrderStateError
from payments.services.transitions import (
    Source,
    bind_order,
    count_on_commit,
    creation_log_row,
    fire,
    flag,
    locked_order,
    log_created,
)

log = logging.getLogger(__name__)

# What makes a repeated merchant_order_no the same order (API.md): a difference in any of them is a 409.
_COMPARED = ("amount", "currency", "channel", "description", "notify_url", "metadata", "expires_in")


def order_create(
    *,
    merchant: Merchant,
    merchant_order_no: str,
    amount: int,
    currency: str,
    channel: str,
    description: str = "",
    notify_url: str = "",
    expires_in: int = 900,
    metadata: Mapping[str, str] | None = None,
    idempotency_key: Claim | None = None,
) -> tuple[Order, bool]:
    """Store a new order and enqueue its charge. Returns (order, created).

    ``merchant_order_no`` is unique per merchant in the database: a repeat with the same parameters returns
    the existing order; with different ones it raises ``DuplicateError``. With ``idempotency_key``, the key's
    answer for the new order is stored with it, and ``KeyAnswered`` means the key already has one.

    This is the API's hot path: the order, its log row, the stored answer and the charge's notification to
    the outbox are one statement, one round trip to the database (``payments.db``).
    """
    order = Order(
        merchant=merchant,
        merchant_order_no=merchant_order_no,
        amount=amount,
        currency=currency,
        channel=channel,
        description=description,
        notify_url=notify_url,
        metadata=dict(metadata or {}),
        expires_in=expires_in,
        expires_at=timezone.now() + dt.timedelta(seconds=expires_in),
        trace_id=current_trace_id(),
    )
    rows = db.Statement()
    rows.insert(order)
    rows.insert(creation_log_row(order, Source.API))
    if idempotency_key is not None:
        rows.insert(idempotency_key.record_for(order))
    try:
        rows.run(enqueue=outbox.CHARGE_ORDER)
    except IntegrityError as exc:
        if is_key_conflict(exc):
            raise KeyAnswered() from None
        if db.violated_constraint(exc) != "order_merchant_order_no_uniq":
            raise
        existing = Order.objects.get(merchant=merchant, merchant_order_no=merchant_order_no)
        if any(getattr(existing, name) != getattr(order, name) for name in _COMPARED):
            raise DuplicateError("merchant_order_no") from None
        return existing, False
    bind(order_id=order.public_id, channel=channel)
    log_created(order, Source.API)
    count_on_commit(order)
    return order, True


def order_charge(*, order_id: int) -> None:
    """Place a ``created`` order with its channel (the charge task's body)."""
    order = db.get(Order, pk=order_id)
    if order is None or order.status != OrderStatus.CREATED:
        return
    bind_order(order)
    # Never sent anywhere yet: it may go to the backup account while the primary's breaker is open (a question
    # to Redis, asked before any row is locked). Kept by the statement below only for the first attempt: a later
    # attempt may find the trade only where the first one sent it.
    account = order.channel_account or channel_for_new_charge(order.channel).account
    counted = db.fetch_one(_COUNT_ATTEMPT_SQL, [account, timezone.now(), order_id, OrderStatus.CREATED])
    if counted is None:
        return  # no longer created: paid, closed or failed meanwhile
    order.charge_attempts, order.channel_account = counted
    # Committed: from here on, a crash leaves a trace that an attempt may have reached the channel.

    channel = channel_of(order)
    if order.charge_attempts > 1:
        # An earlier attempt may have reached the channel: ask before sending anything again.
        found = channel.query_trade(out_trade_no=order.public_id)
        # A waiting trade without its pay_url (channels' queries rarely return it) falls through to the
        # create below, which the channel deduplicates by out_trade_no and answers with the same pay_url.
        if found.status != TradeStatus.NOT_FOUND and (found.status != TradeStatus.WAITING or found.pay_url):
            _settle_after_charge(order_id, found)
            return
    try:
        trade = channel.create_trade(
            out_trade_no=order.public_id,
            amount=order.amount,
            currency=order.currency,
            description=order.description or order.merchant_order_no,
            notify_url=channel_notify_url(order.channel),
            expires_at=order.expires_at,
        )
    except UnknownOutcome:
        # The create may have happened. The query decides; if the channel has no such trade, the next
        # attempt (with backoff) queries again before it creates, with the same out_trade_no.
        trade = channel.query_trade(out_trade_no=order.public_id)
        if trade.status == TradeStatus.NOT_FOUND or (trade.status == TradeStatus.WAITING and not trade.pay_url):
            # Nothing yet, or a trade we cannot show the payer: the next attempt queries again, then
            # resubmits the same out_trade_no (never a second trade).
            raise Retryable("no usable trade after an unanswered create", code="channel_timeout") from None
    except Refused as refusal:
        with transaction.atomic():
            order = locked_order(order_id)
            if order.status == OrderStatus.CREATED:
                fire(order, "mark_failed", source=Source.WORKER, code=refusal.code, message=refusal.message)
        return
    _settle_after_charge(order_id, trade)


# The attempt counted, and the account chosen on the first, in one statement on the row (atomic by itself).
_COUNT_ATTEMPT_SQL = (
    f"UPDATE {Order._meta.db_table} SET charge_attempts = charge_attempts + 1,"
    " channel_account = CASE WHEN charge_attempts = 0 AND channel_account = '' THEN %s ELSE channel_account END,"
    " updated_at = %s WHERE id = %s AND status = %s RETURNING charge_attempts, channel_account"
)


def _settle_after_charge(order_id: int, trade: TradeResult) -> None:
    order = order_apply_trade(order_id=order_id, trade=trade, source=Source.WORKER)
    if order.status == OrderStatus.CLOSED and trade.status == TradeStatus.WAITING:
        # The merchant closed the order while the charge was on its way: close the trade we just made,
        # so that nobody can pay it.
        channel_of(order).close_trade(out_trade_no=order.public_id)


def order_apply_trade(*, order_id: int, trade: TradeResult, source: str) -> Order:
    """Apply what the channel says of a trade (from a create, a query, a close or a reconciliation)."""
    with transaction.atomic():
        order = locked_order(order_id)
        apply_trade(order, trade, source)
        return order


def apply_trade(order: Order, trade: TradeResult, source: str) -> None:
    """Apply ``trade`` to an order the caller holds locked (also a notification's work)."""
    order.last_channel_check_at = timezone.now()
    status = order.status
    _apply_trade(order, trade, source)
    if order.status == status:
        # A transition saves the whole row, the check's time with it; otherwise the time is saved alone. One
        # UPDATE where there were two.
        db.Statement().update(order, fields=["last_channel_check_at"]).run(savepoint=False)


def _apply_trade(order: Order, trade: TradeResult, source: str) -> None:
    if trade.status == TradeStatus.NOT_FOUND:
        return
    if (trade.amount is not None and trade.amount != order.amount) or (
        trade.currency is not None and trade.currency != order.currency
    ):
        flag(order, "channel_amount_mismatch")
        return
    if trade.status == TradeStatus.WAITING:
        # Pending means the payer can pay: only an answer that carries the pay_url (the create's) moves it.
        # A waiting trade heard of otherwise (a query, Alipay's WAIT_BUYER_PAY) leaves that to the charge.
        if order.status == OrderStatus.CREATED and trade.pay_url:
            fire(order, "mark_pending", source=source, pay_url=trade.pay_url,
                 channel_trade_no=trade.channel_trade_no or "")
    elif trade.status == TradeStatus.SUCCEEDED:
        if order.status in OPEN_ORDER_STATES:
            fire(
                order, "mark_succeeded", source=source,
                paid_at=trade.paid_at or timezone.now(), channel_trade_no=trade.channel_trade_no or "",
            )
        elif order.status in (OrderStatus.CLOSED, OrderStatus.FAILED):
            # Money arrived for an order we gave up on. Never drop it: ops decide to refund or accept.
            order.channel_trade_no = trade.channel_trade_no or order.channel_trade_no
            order.save(update_fields=["channel_trade_no"])
            flag(order, "paid_after_" + order.status)
    elif trade.status == TradeStatus.CLOSED and order.status in OPEN_ORDER_STATES:
        fire(order, "mark_closed", source=source)


def order_query(*, order_id: int, source: str = Source.SWEEP) -> Order:
    """Ask the channel how an open order stands and apply the answer (the pending sweep's work)."""
    order = Order.objects.get(pk=order_id)
    bind_order(order)
    if order.status not in OPEN_ORDER_STATES:
        return order
    trade = channel_of(order).query_trade(out_trade_no=order.public_id)
    return order_apply_trade(order_id=order_id, trade=trade, source=source)


def order_close(*, order_id: int, source: str) -> Order:
    """Close an unpaid order: at the channel first, then here. An order the channel reports as paid
    becomes ``succeeded`` instead, and ``OrderStateError`` tells the caller."""
    order = Order.objects.get(pk=order_id)
    bind_order(order)
    if order.status not in OPEN_ORDER_STATES:
        raise OrderStateError(f"an order in state {order.status} cannot be closed")
    trade = channel_of(order).close_trade(out_trade_no=order.public_id)
    if trade.status == TradeStatus.WAITING:
        raise Retryable("the channel did not close the trade", code="channel_close_failed")
    with transaction.atomic():
        order = locked_order(order_id)
        if trade.status in (TradeStatus.CLOSED, TradeStatus.NOT_FOUND):
            if order.status in OPEN_ORDER_STATES:
                fire(order, "mark_closed", source=source)
        else:
            apply_trade(order, trade, source)
    if order.status != OrderStatus.CLOSED:
        raise OrderStateError(f"the order is {order.status}")
    return order


def order_expire(*, order_id: int) -> None:
    """Close an order whose payment window has passed (the expiry sweep's work)."""
    order = Order.objects.get(pk=order_id)
    if order.status not in OPEN_ORDER_STATES or order.expires_at > timezone.now():
        return
    try:
        order_close(order_id=order_id, source=Source.SWEEP)
    except OrderStateError:
        pass  # it was paid in the meantime: order_close applied that


def order_flag(*, order_id: int, reason: str) -> None:
    """Mark an order that automatic handling gave up on, for ops (task exhaustion)."""
    with transaction.atomic():
        order = locked_order(order_id)
        bind_order(order)
        if order.status in OPEN_ORDER_STATES:
            flag(order, reason)


def order_retry(*, order_id: int) -> bool:
    """Ops' "retry" on an order that automatic handling gave up on: clear the flag and charge again.
    The charge queries the channel first (the order has attempts), so this never makes a second trade."""
    with transaction.atomic():
        order = locked_order(order_id)
        if order.status != OrderStatus.CREATED or not order.attention:
            return False
        order.attention = ""
        order.save(update_fields=["attention", "updated_at"])
        log.warning("ops retry of %s", order.public_id, extra={"order_id": order.public_id, "key_path": True})
        outbox.enqueue(outbox.CHARGE_ORDER, order.pk)
    return True


LATE_PAYMENT_FLAGS = ("paid_after_closed", "paid_after_failed")


def order_accept_late_payment(*, order_id: int, by: str) -> Order:
    """Ops keep a payment that arrived for a closed or failed order: the order becomes ``succeeded`` (and the
    merchant hears ``order.succeeded``). The decision and who made it are in the transition log."""
    with transaction.atomic():
        order = locked_order(order_id)
        if order.attention not in LATE_PAYMENT_FLAGS:
            raise OrderStateError("the order has no late payment to accept")
        fire(order, "accept_late_payment", source=Source.ADMIN, paid_at=timezone.now(),
             channel_trade_no=order.channel_trade_no, detail={"decision": "accept_late_payment", "by": by})
    return order


def channel_of(order: Order) -> Channel:
    """The adapter of the account the order was placed with (its queries, closes and refunds go there)."""
    return channel_for_account(order.channel, order.channel_account)


def channel_notify_url(channel: str) -> str:
    return f"{settings.PUBLIC_BASE_URL}/callbacks/{channel}"
