"""The transaction engine: the only code that changes money state.

Every write is a short transaction on a row locked with ``select_for_update``. Channel calls happen between
transactions, never inside one: record the attempt and commit, call the channel, then apply the answer in a
new transaction that re-reads the row and checks that the state is still the one the answer applies to.
Every function here may run twice (tasks are re-delivered); a repeat finds the work done and returns.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import secrets
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from channels.base import (
    InvalidNotification,
    Refused,
    RefundResult,
    RefundStatus,
    Retryable,
    TradeResult,
    TradeStatus,
    UnknownOutcome,
    notification_from_dict,
    notification_to_dict,
)
from channels.registry import get_channel
from payments import db, metrics, outbox, tasks
from payments.idempotency import Claim, KeyAnswered, is_key_conflict
from payments.models import (
    OPEN_ORDER_STATES,
    ApiKey,
    PAID_ORDER_STATES,
    ChannelNotification,
    Event,
    Merchant,
    Order,
    OrderStatus,
    Refund,
    TransitionLog,
)
from payments.models import RefundStatus as RefundState
from payments.observability import bind, current_trace_id, link_origin_trace
from payments.representations import order_json, refund_json

log = logging.getLogger(__name__)


def hash_key(secret_key: str) -> str:
    return hashlib.sha256(secret_key.encode()).hexdigest()


Source = TransitionLog.Source

# Order and refund states that merchants hear about as events.
ORDER_EVENTS = {OrderStatus.PENDING, OrderStatus.SUCCEEDED, OrderStatus.FAILED, OrderStatus.CLOSED}
REFUND_EVENTS = {RefundState.SUCCEEDED, RefundState.FAILED}
SIGNATURE_HEADERS = ("signature", "authorization")


class OrderStateError(Exception):
    """The order's state does not allow the operation (API: 409 ``order_state``)."""


class DuplicateError(Exception):
    """A merchant number reused with different parameters (API: 409 ``duplicate_…``)."""


class RefundExceedsAmount(Exception):
    """The refunds would exceed what was paid (API: 422 ``refund_exceeds_amount``)."""


# -- transitions -----------------------------------------------------------------------------------------


def _fire(obj: Order | Refund, name: str, *, source: str, detail: dict | None = None, **kwargs: Any) -> None:
    """Fire transition ``name`` on a row the caller holds locked, save it, log it, and record the event
    merchants hear about. Runs inside the caller's transaction, so all of it commits or none does."""
    before = obj.status
    getattr(obj, name)(**kwargs)
    obj.save()
    kind = "order" if isinstance(obj, Order) else "refund"
    TransitionLog.objects.create(
        object_type=kind,
        object_id=obj.public_id,
        transition=name,
        from_state=before,
        to_state=obj.status,
        source=source,
        trace_id=current_trace_id(),
        detail=detail or {},
    )
    log.info(
        "%s %s: %s -> %s", kind, obj.public_id, before, obj.status,
        extra={f"{kind}_id": obj.public_id, "transition": name, "source": source, "key_path": True},
    )
    _count_on_commit(obj)
    if isinstance(obj, Order) and obj.status in ORDER_EVENTS:
        Event.objects.create(merchant_id=obj.merchant_id, type=f"order.{obj.status}", order=obj, data=order_json(obj))
    elif isinstance(obj, Refund) and obj.status in REFUND_EVENTS:
        Event.objects.create(
            merchant_id=obj.order.merchant_id, type=f"refund.{obj.status}", order=obj.order, refund=obj,
            data=refund_json(obj),
        )


def _count_on_commit(obj: Order | Refund) -> None:
    """Count the status the row entered, once it is committed (a rolled-back transition never happened)."""
    if isinstance(obj, Order):
        counter = metrics.ORDERS.labels(channel=obj.channel, status=obj.status)
    else:
        counter = metrics.REFUNDS.labels(channel=obj.order.channel, status=obj.status)
    transaction.on_commit(counter.inc)


@lru_cache(maxsize=10_000)
def _merchant_public_id(merchant_pk: int) -> str:
    # Public ids never change: one query per merchant per process, not one per task.
    return Merchant.objects.values_list("public_id", flat=True).get(pk=merchant_pk)


def _bind_order(order: Order) -> None:
    """Name the order on every log line of the current task or request."""
    bind(order_id=order.public_id, channel=order.channel, merchant_id=_merchant_public_id(order.merchant_id))


def _creation_log(obj: Order | Refund, source: str) -> TransitionLog:
    """The log row of a new order or refund: created is the state it enters, from none."""
    return TransitionLog(
        object_type="order" if isinstance(obj, Order) else "refund",
        object_id=obj.public_id,
        transition="create",
        from_state="",
        to_state=obj.status,
        source=source,
        trace_id=current_trace_id(),
    )


def _log_line_created(obj: Order | Refund, source: str) -> None:
    kind = "order" if isinstance(obj, Order) else "refund"
    log.info("%s %s created", kind, obj.public_id, extra={"transition": "create", "source": source, "key_path": True})


def _log_created(obj: Order | Refund, source: str) -> None:
    _creation_log(obj, source).save()
    _log_line_created(obj, source)


def _enqueue_on_commit(task: Any, object_id: int) -> None:
    """Enqueue ``task(object_id)`` once the current transaction commits (never if it rolls back).

    PostgreSQL holds the outbox's notification until COMMIT and the dispatcher publishes it: the caller
    never waits on the broker, and if the broker is down a beat sweep enqueues the work from the row."""
    outbox.enqueue(task.name.rsplit(".", 1)[-1], object_id)


def _locked_order(order_id: int) -> Order:
    return Order.objects.select_for_update().get(pk=order_id)


def _flag(obj: Order | Refund, reason: str) -> None:
    """Leave the row visibly needing ops, and say so loudly."""
    obj.attention = reason[:64]
    obj.save(update_fields=["attention", "updated_at"])
    ids = {"order_id": obj.public_id} if isinstance(obj, Order) else {"refund_id": obj.public_id}
    log.error("%s needs attention: %s", obj.public_id, reason, extra={**ids, "reason": reason, "key_path": True})


# -- merchants and keys ---------------------------------------------------------------------------------


def merchant_create(*, name: str, live: bool = False) -> tuple[Merchant, str]:
    """A merchant and its first secret key. The key is returned once and stored only as a hash."""
    with transaction.atomic():
        merchant = Merchant.objects.create(name=name, webhook_secret="whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())
        secret_key = api_key_create(merchant=merchant, live=live)
    return merchant, secret_key


def api_key_create(*, merchant: Merchant, live: bool = False, scopes: list[str] | None = None) -> str:
    secret_key = ("sk_live_" if live else "sk_test_") + secrets.token_urlsafe(24)
    ApiKey.objects.create(merchant=merchant, prefix=secret_key[:12], key_hash=hash_key(secret_key), scopes=scopes or [])
    return secret_key


def api_key_rotate(*, merchant: Merchant) -> str:
    """Revoke every active key of the merchant and issue a new one."""
    with transaction.atomic():
        merchant.api_keys.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        return api_key_create(merchant=merchant, live=False)


# -- orders ----------------------------------------------------------------------------------------------


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
    the existing order; with different ones it raises ``DuplicateError``. With ``idempotency_key``, its
    answer (201 and the order, as the API gives it) is stored with the order, and ``KeyAnswered`` means the
    key already has one.

    This is the API's hot path: the order, its log row, the stored answer and the charge's notification to
    the outbox are one statement, one round trip to the database (``payments.db``).
    """
    fields = {
        "amount": amount,
        "currency": currency,
        "channel": channel,
        "description": description,
        "notify_url": notify_url,
        "metadata": dict(metadata or {}),
        "expires_in": expires_in,
    }
    order = Order(
        merchant=merchant,
        merchant_order_no=merchant_order_no,
        expires_at=timezone.now() + dt.timedelta(seconds=expires_in),
        trace_id=current_trace_id(),
        **fields,
    )
    rows = db.Insert()
    rows.add(order)
    rows.add(_creation_log(order, Source.API))
    if idempotency_key is not None:
        rows.add(idempotency_key.answer(201, order_json(order)))
    try:
        rows.run(notify_task="charge_order")
    except IntegrityError as exc:
        if is_key_conflict(exc):
            raise KeyAnswered() from None
        if db.violated_constraint(exc) != "order_merchant_order_no_uniq":
            raise
        existing = Order.objects.get(merchant=merchant, merchant_order_no=merchant_order_no)
        if any(getattr(existing, name) != value for name, value in fields.items()):
            raise DuplicateError("duplicate_merchant_order_no") from None
        return existing, False
    bind(order_id=order.public_id, channel=channel)
    _log_line_created(order, Source.API)
    _count_on_commit(order)
    return order, True


def order_charge(*, order_id: int) -> None:
    """Place a ``created`` order with its channel (the charge task's body)."""
    with transaction.atomic():
        order = _locked_order(order_id)
        _bind_order(order)
        if order.status != OrderStatus.CREATED:
            return
        order.charge_attempts += 1
        order.save(update_fields=["charge_attempts", "updated_at"])
    # Committed: from here on, a crash leaves a trace that an attempt may have reached the channel.

    channel = get_channel(order.channel)
    if order.charge_attempts > 1:
        # An earlier attempt may have reached the channel: ask before sending anything again.
        found = channel.query_trade(out_trade_no=order.public_id)
        # A waiting trade without its pay_url (channels' queries rarely return it) falls through to the
        # create below, which the channel deduplicates by out_trade_no and answers with the same pay_url.
        if found.status != TradeStatus.NOT_FOUND and (found.status != TradeStatus.WAITING or found.pay_url):
            _order_settle_after_charge(order_id, found, Source.WORKER)
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
            order = _locked_order(order_id)
            if order.status == OrderStatus.CREATED:
                _fire(order, "mark_failed", source=Source.WORKER, code=refusal.code, message=refusal.message)
        return
    _order_settle_after_charge(order_id, trade, Source.WORKER)


def _order_settle_after_charge(order_id: int, trade: TradeResult, source: str) -> None:
    order = order_apply_trade(order_id=order_id, trade=trade, source=source)
    if order.status == OrderStatus.CLOSED and trade.status == TradeStatus.WAITING:
        # The merchant closed the order while the charge was on its way: close the trade we just made,
        # so that nobody can pay it.
        get_channel(order.channel).close_trade(out_trade_no=order.public_id)


def order_apply_trade(*, order_id: int, trade: TradeResult, source: str) -> Order:
    """Apply what the channel says of a trade (from a create, a query, a close or a notification)."""
    with transaction.atomic():
        order = _locked_order(order_id)
        _apply_trade(order, trade, source)
        return order


def _apply_trade(order: Order, trade: TradeResult, source: str) -> None:
    order.last_channel_check_at = timezone.now()
    order.save(update_fields=["last_channel_check_at"])
    if trade.status == TradeStatus.NOT_FOUND:
        return
    if (trade.amount is not None and trade.amount != order.amount) or (
        trade.currency is not None and trade.currency != order.currency
    ):
        _flag(order, "channel_amount_mismatch")
        return
    if trade.status == TradeStatus.WAITING:
        # Pending means the payer can pay: only an answer that carries the pay_url (the create's) moves it.
        # A waiting trade heard of otherwise (a query, Alipay's WAIT_BUYER_PAY) leaves that to the charge.
        if order.status == OrderStatus.CREATED and trade.pay_url:
            _fire(order, "mark_pending", source=source, pay_url=trade.pay_url,
                  channel_trade_no=trade.channel_trade_no or "")
    elif trade.status == TradeStatus.SUCCEEDED:
        if order.status in OPEN_ORDER_STATES:
            _fire(
                order, "mark_succeeded", source=source,
                paid_at=trade.paid_at or timezone.now(), channel_trade_no=trade.channel_trade_no or "",
            )
        elif order.status in (OrderStatus.CLOSED, OrderStatus.FAILED):
            # Money arrived for an order we gave up on. Never drop it: ops decide to refund or accept.
            order.channel_trade_no = trade.channel_trade_no or order.channel_trade_no
            order.save(update_fields=["channel_trade_no"])
            _flag(order, "paid_after_" + order.status)
    elif trade.status == TradeStatus.CLOSED and order.status in OPEN_ORDER_STATES:
        _fire(order, "mark_closed", source=source)


def order_query(*, order_id: int, source: str = Source.SWEEP) -> Order:
    """Ask the channel how an open order stands and apply the answer (the pending sweep's work)."""
    order = Order.objects.get(pk=order_id)
    _bind_order(order)
    if order.status not in OPEN_ORDER_STATES:
        return order
    trade = get_channel(order.channel).query_trade(out_trade_no=order.public_id)
    return order_apply_trade(order_id=order_id, trade=trade, source=source)


def order_close(*, order_id: int, source: str) -> Order:
    """Close an unpaid order: at the channel first, then here. An order the channel reports as paid
    becomes ``succeeded`` instead, and ``OrderStateError`` tells the caller."""
    order = Order.objects.get(pk=order_id)
    _bind_order(order)
    if order.status not in OPEN_ORDER_STATES:
        raise OrderStateError(f"an order in state {order.status} cannot be closed")
    trade = get_channel(order.channel).close_trade(out_trade_no=order.public_id)
    if trade.status == TradeStatus.WAITING:
        raise Retryable("the channel did not close the trade", code="channel_close_failed")
    with transaction.atomic():
        order = _locked_order(order_id)
        if trade.status in (TradeStatus.CLOSED, TradeStatus.NOT_FOUND):
            if order.status in OPEN_ORDER_STATES:
                _fire(order, "mark_closed", source=source)
        else:
            _apply_trade(order, trade, source)
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
        order = _locked_order(order_id)
        _bind_order(order)
        if order.status in OPEN_ORDER_STATES:
            _flag(order, reason)


def order_retry(*, order_id: int) -> bool:
    """Ops' "retry" on an order that automatic handling gave up on: clear the flag and charge again.
    The charge queries the channel first (the order has attempts), so this never makes a second trade."""
    with transaction.atomic():
        order = _locked_order(order_id)
        if order.status != OrderStatus.CREATED or not order.attention:
            return False
        order.attention = ""
        order.save(update_fields=["attention", "updated_at"])
        log.warning("ops retry of %s", order.public_id, extra={"order_id": order.public_id, "key_path": True})
        _enqueue_on_commit(tasks.charge_order, order.pk)
    return True


LATE_PAYMENT_FLAGS = ("paid_after_closed", "paid_after_failed")


def order_accept_late_payment(*, order_id: int, by: str) -> Order:
    """Ops keep a payment that arrived for a closed or failed order: the order becomes ``succeeded`` (and the
    merchant hears ``order.succeeded``). The decision and who made it are in the transition log."""
    with transaction.atomic():
        order = _locked_order(order_id)
        if order.attention not in LATE_PAYMENT_FLAGS:
            raise OrderStateError("the order has no late payment to accept")
        _fire(order, "accept_late_payment", source=Source.ADMIN, paid_at=timezone.now(),
              channel_trade_no=order.channel_trade_no, detail={"decision": "accept_late_payment", "by": by})
    return order


def order_refund_late_payment(*, order_id: int, by: str) -> Refund:
    """Ops return a payment that arrived for a closed or failed order: a full refund through the channel,
    while the order stays as it was. The refund is an ordinary one (task, retries, query-first)."""
    with transaction.atomic():
        order = _locked_order(order_id)
        if order.attention not in LATE_PAYMENT_FLAGS:
            raise OrderStateError("the order has no late payment to refund")
        refund = Refund.objects.create(
            order=order, merchant_refund_no=f"late-payment-{order.public_id}", amount=order.amount,
            currency=order.currency, reason="payment received after the order was closed",
            trace_id=current_trace_id(),
        )
        _log_created(refund, Source.ADMIN)
        order.attention = "late_payment_refunding"
        order.save(update_fields=["attention", "updated_at"])
        log.warning("late payment of %s refunded by %s", order.public_id, by,
                    extra={"order_id": order.public_id, "refund_id": refund.public_id, "key_path": True})
        _enqueue_on_commit(tasks.refund_order, refund.pk)
    return refund


def channel_notify_url(channel: str) -> str:
    from django.conf import settings

    return f"{settings.PUBLIC_BASE_URL}/callbacks/{channel}"


# -- refunds ---------------------------------------------------------------------------------------------


def refund_request(
    *, order_id: int, merchant_refund_no: str, amount: int, reason: str = "", idempotency_key: Claim | None = None
) -> tuple[Refund, bool]:
    """Accept a refund of a paid order and enqueue it. Returns (refund, created).

    The order row is locked while the refunds are summed, so concurrent requests are serialised and the
    refunds that are not failed never add up to more than was paid. With ``idempotency_key``, its answer
    (201 and the refund) commits with the refund, and ``KeyAnswered`` means the key already has one.
    """
    try:
        return _refund_request(order_id=order_id, merchant_refund_no=merchant_refund_no, amount=amount,
                               reason=reason, idempotency_key=idempotency_key)
    except IntegrityError as exc:
        if is_key_conflict(exc):
            raise KeyAnswered() from None
        raise


def _refund_request(
    *, order_id: int, merchant_refund_no: str, amount: int, reason: str, idempotency_key: Claim | None
) -> tuple[Refund, bool]:
    with transaction.atomic():
        order = _locked_order(order_id)
        bind(order_id=order.public_id, channel=order.channel)
        existing = order.refunds.filter(merchant_refund_no=merchant_refund_no).first()
        if existing is not None:
            if existing.amount != amount or existing.reason != reason:
                raise DuplicateError("duplicate_merchant_refund_no")
            return existing, False
        if order.status not in PAID_ORDER_STATES:
            raise OrderStateError(f"an order in state {order.status} cannot be refunded")
        committed = order.refunds.exclude(status=RefundState.FAILED).aggregate(total=Sum("amount"))["total"] or 0
        if committed + amount > order.amount:
            raise RefundExceedsAmount(
                f"refunds would total {committed + amount}, more than the {order.amount} paid"
            )
        refund = Refund.objects.create(
            order=order,
            merchant_refund_no=merchant_refund_no,
            amount=amount,
            currency=order.currency,
            reason=reason,
            trace_id=current_trace_id(),
        )
        bind(refund_id=refund.public_id)
        _log_created(refund, Source.API)
        if idempotency_key is not None:
            idempotency_key.answer(201, refund_json(refund)).save()
        _count_on_commit(refund)
        _enqueue_on_commit(tasks.refund_order, refund.pk)
    return refund, True


def refund_submit(*, refund_id: int) -> None:
    """Send a refund to the channel (the refund task's body)."""
    with transaction.atomic():
        refund = Refund.objects.select_for_update().select_related("order").get(pk=refund_id)
        _bind_order(refund.order)
        bind(refund_id=refund.public_id)
        if refund.status not in (RefundState.PENDING, RefundState.PROCESSING):
            return
        refund.submit_attempts += 1
        refund.save(update_fields=["submit_attempts", "updated_at"])
    order = refund.order
    channel = get_channel(order.channel)
    if refund.submit_attempts > 1 or refund.status == RefundState.PROCESSING:
        found = channel.query_refund(out_trade_no=order.public_id, out_refund_no=refund.public_id)
        if found.status != RefundStatus.NOT_FOUND:
            refund_apply_result(refund_id=refund_id, result=found, source=Source.WORKER)
            return
    try:
        result = channel.refund(
            out_trade_no=order.public_id,
            out_refund_no=refund.public_id,
            amount=refund.amount,
            total_amount=order.amount,
            currency=refund.currency,
            reason=refund.reason,
        )
    except UnknownOutcome:
        # Never refund twice: the query decides, and the next attempt queries again first.
        result = channel.query_refund(out_trade_no=order.public_id, out_refund_no=refund.public_id)
        if result.status == RefundStatus.NOT_FOUND:
            raise Retryable("refund not found after an unanswered request", code="channel_timeout") from None
    except Refused as refusal:
        result = RefundResult(refund.public_id, RefundStatus.FAILED, failure_code=refusal.code)
    refund_apply_result(refund_id=refund_id, result=result, source=Source.WORKER)


def refund_apply_result(*, refund_id: int, result: RefundResult, source: str) -> None:
    with transaction.atomic():
        # Lock order, then refund: the same order as refund_request and notification_apply, so no deadlock.
        order_id = Refund.objects.values_list("order_id", flat=True).get(pk=refund_id)
        order = _locked_order(order_id)
        refund = Refund.objects.select_for_update().get(pk=refund_id)
        refund.order = order
        _apply_refund(order, refund, result, source)


def _apply_refund(order: Order, refund: Refund, result: RefundResult, source: str) -> None:
    if result.status == RefundStatus.NOT_FOUND or refund.status in (RefundState.SUCCEEDED, RefundState.FAILED):
        return
    if result.amount is not None and result.amount != refund.amount:
        _flag(refund, "channel_amount_mismatch")
        return
    if refund.status == RefundState.PENDING and result.status != RefundStatus.FAILED:
        _fire(refund, "mark_processing", source=source, channel_refund_no=result.channel_refund_no or "")
    if result.status == RefundStatus.PROCESSING and result.failure_code and refund.attention != result.failure_code:
        # Stuck at the channel (e.g. WeChat's REFUND.ABNORMAL: the payer's account refused the money). Failing
        # it would free the amount for a second refund, so it stays processing and ops are told.
        _flag(refund, result.failure_code)
    if result.status == RefundStatus.SUCCEEDED:
        _fire(
            refund, "mark_succeeded", source=source,
            succeeded_at=result.succeeded_at or timezone.now(), channel_refund_no=result.channel_refund_no or "",
        )
        if order.status in PAID_ORDER_STATES:
            full = order.amount_refunded + refund.amount == order.amount
            _fire(order, "record_full_refund" if full else "record_partial_refund", source=source, amount=refund.amount)
        else:
            # A late payment returned (order_refund_late_payment): the order stays closed or failed.
            order.amount_refunded += refund.amount
            order.attention = ""
            order.save(update_fields=["amount_refunded", "attention", "updated_at"])
    elif result.status == RefundStatus.FAILED:
        code = result.failure_code or "channel_refund_failed"
        _fire(refund, "mark_failed", source=source, code=code, message=f"the channel refused the refund ({code})")


def refund_flag(*, refund_id: int, reason: str) -> None:
    with transaction.atomic():
        refund = Refund.objects.select_for_update().get(pk=refund_id)
        bind(refund_id=refund.public_id)
        if refund.status in (RefundState.PENDING, RefundState.PROCESSING):
            _flag(refund, reason)


# -- channel notifications -------------------------------------------------------------------------------


def notification_receive(*, channel: str, headers: Mapping[str, str], body: bytes) -> tuple[ChannelNotification, bool]:
    """Verify and store an inbound notification, and enqueue its processing. Returns (row, accepted).

    A notification that fails verification is stored as rejected with the reason and changes nothing.
    A repeat of one already stored (the channel's retries) is accepted without storing it again.
    """
    bind(channel=channel)
    kept_headers = {k: v for k, v in headers.items() if not any(word in k.lower() for word in SIGNATURE_HEADERS)}
    text = body.decode("utf-8", errors="replace")
    try:
        parsed = get_channel(channel).parse_notification(headers=headers, body=body)
    except InvalidNotification as invalid:
        row = ChannelNotification.objects.create(
            channel=channel, headers=kept_headers, body=text, state=ChannelNotification.State.REJECTED,
            reason=invalid.reason, trace_id=current_trace_id(),
        )
        log.warning("rejected %s notification: %s", channel, invalid.reason, extra={"channel": channel, "key_path": True})
        metrics.NOTIFICATIONS.labels(channel=channel, result="rejected", reason=invalid.reason).inc()
        return row, False
    order = Order.objects.filter(public_id=parsed.out_trade_no).only("id", "public_id", "trace_id").first()
    if order is not None:
        # The notification has its own trace; tie it to the one that created the order.
        bind(order_id=order.public_id)
        link_origin_trace(order.trace_id)
    try:
        with transaction.atomic():
            row = ChannelNotification.objects.create(
                channel=channel,
                channel_notification_id=parsed.notification_id,
                headers=kept_headers,
                body=text,
                payload=notification_to_dict(parsed),
                order=order,
                trace_id=current_trace_id(),
            )
            _enqueue_on_commit(tasks.process_notification, row.pk)
    except IntegrityError:
        row = ChannelNotification.objects.get(channel=channel, channel_notification_id=parsed.notification_id)
        metrics.NOTIFICATIONS.labels(channel=channel, result="accepted", reason="duplicate").inc()
        return row, True
    log.info("accepted %s notification for %s", channel, parsed.out_trade_no, extra={"channel": channel, "key_path": True})
    metrics.NOTIFICATIONS.labels(channel=channel, result="accepted", reason="new").inc()
    return row, True


def notification_apply(*, notification_id: int) -> None:
    """Apply a stored, verified notification (the callback task's body). A repeat is a no-op."""
    with transaction.atomic():
        row = ChannelNotification.objects.select_for_update().get(pk=notification_id)
        if row.state != ChannelNotification.State.RECEIVED:
            return
        notification = notification_from_dict(row.payload)
        order = Order.objects.select_for_update().filter(public_id=notification.out_trade_no).first()
        bind(channel=row.channel)
        if order is not None:
            _bind_order(order)
            link_origin_trace(order.trace_id)
        reason = ""
        if notification.trade is None and notification.refund is None:
            pass  # verified, acknowledged, nothing to act on
        elif order is None or order.channel != row.channel:
            reason = "unknown_order"
        elif notification.trade is not None:
            trade = notification.trade
            if trade.amount != order.amount or trade.currency != order.currency:
                reason = "amount_mismatch"
            else:
                _apply_trade(order, trade, Source.CALLBACK)
        elif notification.refund is not None:
            refund = Refund.objects.select_for_update().filter(
                order=order, public_id=notification.refund.out_refund_no
            ).first()
            if refund is None:
                reason = "unknown_refund"
            else:
                refund.order = order
                _apply_refund(order, refund, notification.refund, Source.CALLBACK)
        row.state = ChannelNotification.State.REJECTED if reason else ChannelNotification.State.PROCESSED
        row.reason = reason
        row.processed_at = timezone.now()
        row.save(update_fields=["state", "reason", "processed_at"])
    if reason:
        log.error("notification %s not applied: %s", row.pk, reason, extra={"channel": row.channel, "key_path": True})
        metrics.NOTIFICATIONS.labels(channel=row.channel, result="rejected", reason=reason).inc()
