"""Refunds: accept one for a paid order, submit it to the channel, apply what the channel says.

The order row is always locked before the refund row (here, and in the notification service), so that no two
transactions wait on each other. As with orders, the channel is called between transactions.
"""

from __future__ import annotations

import logging

from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from channels.base import RefundResult, RefundStatus, Refused, Retryable, UnknownOutcome
from payments import outbox
from payments.idempotency import Claim, KeyAnswered, is_key_conflict
from payments.models import PAID_ORDER_STATES, Order, Refund, RefundState
from payments.observability import bind, current_trace_id
from payments.services.errors import DuplicateError, OrderStateError, RefundExceedsAmount
from payments.services.orders import LATE_PAYMENT_FLAGS, channel_of
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


def refund_request(
    *, order_id: int, merchant_refund_no: str, amount: int, reason: str = "", idempotency_key: Claim | None = None,
    source: str = Source.API,
) -> tuple[Refund, bool]:
    """Accept a refund of a paid order and enqueue it. Returns (refund, created).

    The order row is locked while the refunds are summed, so concurrent requests are serialised and the
    refunds that are not failed never add up to more than was paid. With ``idempotency_key``, the key's
    answer commits with the refund, and ``KeyAnswered`` means the key already has one.
    """
    try:
        with transaction.atomic():
            order = locked_order(order_id)
            bind(order_id=order.public_id, channel=order.channel)
            existing = order.refunds.filter(merchant_refund_no=merchant_refund_no).first()
            if existing is not None:
                if existing.amount != amount or existing.reason != reason:
                    raise DuplicateError("merchant_refund_no")
                return existing, False
            if order.status not in PAID_ORDER_STATES:
                raise OrderStateError(f"an order in state {order.status} cannot be refunded")
            committed = order.refunds.exclude(status=RefundState.FAILED).aggregate(total=Sum("amount"))["total"] or 0
            if committed + amount > order.amount:
                raise RefundExceedsAmount(
                    f"refunds would total {committed + amount}, more than the {order.amount} paid"
                )
            refund = _refund_create(order, merchant_refund_no=merchant_refund_no, amount=amount, reason=reason,
                                    source=source)
            if idempotency_key is not None:
                idempotency_key.record_for(refund).save()
    except IntegrityError as exc:
        if is_key_conflict(exc):
            raise KeyAnswered() from None
        raise
    return refund, True


def _refund_create(order: Order, *, merchant_refund_no: str, amount: int, reason: str, source: str) -> Refund:
    """A new refund of an order the caller holds locked, logged, counted and enqueued with its transaction."""
    refund = Refund.objects.create(
        order=order, merchant_refund_no=merchant_refund_no, amount=amount, currency=order.currency, reason=reason,
        trace_id=current_trace_id(),
    )
    bind(refund_id=refund.public_id)
    creation_log_row(refund, source).save()
    log_created(refund, source)
    count_on_commit(refund)
    outbox.enqueue(outbox.SUBMIT_REFUND, refund.pk)
    return refund


def order_refund_late_payment(*, order_id: int, by: str) -> Refund:
    """Ops return a payment that arrived for a closed or failed order: a full refund through the channel,
    while the order stays as it was. The refund is an ordinary one (task, retries, query-first)."""
    with transaction.atomic():
        order = locked_order(order_id)
        if order.attention not in LATE_PAYMENT_FLAGS:
            raise OrderStateError("the order has no late payment to refund")
        refund = _refund_create(
            order, merchant_refund_no=f"late-payment-{order.public_id}", amount=order.amount,
            reason="payment received after the order was closed", source=Source.ADMIN,
        )
        order.attention = "late_payment_refunding"
        order.save(update_fields=["attention", "updated_at"])
        log.warning("late payment of %s refunded by %s", order.public_id, by,
                    extra={"order_id": order.public_id, "refund_id": refund.public_id, "key_path": True})
    return refund


def refund_submit(*, refund_id: int) -> None:
    """Send a refund to the channel (the refund task's body)."""
    with transaction.atomic():
        refund = Refund.objects.select_for_update().select_related("order").get(pk=refund_id)
        bind_order(refund.order)
        bind(refund_id=refund.public_id)
        if refund.status not in (RefundState.PENDING, RefundState.PROCESSING):
            return
        refund.submit_attempts += 1
        refund.save(update_fields=["submit_attempts", "updated_at"])
    order = refund.order
    channel = channel_of(order)
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
        order = locked_order(order_id)
        refund = Refund.objects.select_for_update().get(pk=refund_id)
        refund.order = order
        apply_refund(order, refund, result, source)


def apply_refund(order: Order, refund: Refund, result: RefundResult, source: str) -> None:
    """Apply ``result`` to a refund whose order and row the caller holds locked (also a notification's work)."""
    if result.status == RefundStatus.NOT_FOUND or refund.status in (RefundState.SUCCEEDED, RefundState.FAILED):
        return
    if result.amount is not None and result.amount != refund.amount:
        flag(refund, "channel_amount_mismatch")
        return
    if refund.status == RefundState.PENDING and result.status != RefundStatus.FAILED:
        fire(refund, "mark_processing", source=source, channel_refund_no=result.channel_refund_no or "")
    if result.status == RefundStatus.PROCESSING and result.failure_code and refund.attention != result.failure_code:
        # Stuck at the channel (e.g. WeChat's REFUND.ABNORMAL: the payer's account refused the money). Failing
        # it would free the amount for a second refund, so it stays processing and ops are told.
        flag(refund, result.failure_code)
    if result.status == RefundStatus.SUCCEEDED:
        fire(
            refund, "mark_succeeded", source=source,
            succeeded_at=result.succeeded_at or timezone.now(), channel_refund_no=result.channel_refund_no or "",
        )
        if order.status in PAID_ORDER_STATES:
            full = order.amount_refunded + refund.amount == order.amount
            fire(order, "record_full_refund" if full else "record_partial_refund", source=source, amount=refund.amount)
        else:
            # A late payment returned (order_refund_late_payment): the order stays closed or failed.
            fire(order, "record_late_payment_refund", source=source, amount=refund.amount)
    elif result.status == RefundStatus.FAILED:
        code = result.failure_code or "channel_refund_failed"
        fire(refund, "mark_failed", source=source, code=code, message=f"the channel refused the refund ({code})")


def refund_flag(*, refund_id: int, reason: str) -> None:
    with transaction.atomic():
        refund = Refund.objects.select_for_update().get(pk=refund_id)
        bind(refund_id=refund.public_id)
        if refund.status in (RefundState.PENDING, RefundState.PROCESSING):
            flag(refund, reason)
