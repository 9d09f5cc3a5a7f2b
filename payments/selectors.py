"""Reads that are more than a ``.get()``."""

from __future__ import annotations

import datetime as dt

from django.db.models import Prefetch, Q, QuerySet

from payments.models import (
    OPEN_ORDER_STATES,
    ChannelNotification,
    Event,
    Merchant,
    Order,
    OrderStatus,
    Refund,
    RefundState,
    WebhookDelivery,
)

SWEEP_BATCH = 500


def orders_awaiting_charge(*, before: dt.datetime) -> list[int]:
    """``created`` orders whose charge has not moved since ``before`` (its task may have been lost)."""
    return list(
        Order.objects.filter(status=OrderStatus.CREATED, updated_at__lt=before, attention="")
        .order_by("id")
        .values_list("id", flat=True)[:SWEEP_BATCH]
    )


def orders_awaiting_news(*, before: dt.datetime) -> list[int]:
    """``pending`` orders we have not heard about from the channel since ``before``."""
    return list(
        Order.objects.filter(status=OrderStatus.PENDING, updated_at__lt=before)
        .filter(Q(last_channel_check_at__isnull=True) | Q(last_channel_check_at__lt=before))
        .order_by("id")
        .values_list("id", flat=True)[:SWEEP_BATCH]
    )


def orders_expired(*, now: dt.datetime) -> list[int]:
    return list(
        Order.objects.filter(status__in=OPEN_ORDER_STATES, expires_at__lt=now)
        .order_by("id")
        .values_list("id", flat=True)[:SWEEP_BATCH]
    )


def refunds_unfinished(*, before: dt.datetime) -> list[int]:
    return list(
        Refund.objects.filter(
            status__in=[RefundState.PENDING, RefundState.PROCESSING], updated_at__lt=before, attention=""
        )
        .order_by("id")
        .values_list("id", flat=True)[:SWEEP_BATCH]
    )


def webhooks_due(*, now: dt.datetime, first_attempt_before: dt.datetime | None = None) -> list[int]:
    """Webhook deliveries whose next attempt is due (or whose attempt was lost: its lease has run out).

    With ``first_attempt_before`` (beat's sweep), a delivery never attempted counts only once it was due before
    then: the outbox enqueued its first attempt when it was created, and the sweep takes over only when that one
    seems lost. Without it, each sweep would send the whole backlog of a busy moment a second time."""
    return [delivery_id for delivery_id, _ in webhooks_due_attempts(now=now, first_attempt_before=first_attempt_before)]


def webhooks_due_attempts(
    *, now: dt.datetime, first_attempt_before: dt.datetime | None = None
) -> list[tuple[int, int]]:
    """``webhooks_due`` with each delivery's attempt count, which names the attempt that is due."""
    due = Q(next_attempt_at__lte=now)
    if first_attempt_before is not None:
        due &= Q(attempts__gt=0) | Q(next_attempt_at__lte=first_attempt_before)
    return list(
        WebhookDelivery.objects.filter(due, state=WebhookDelivery.State.PENDING)
        .order_by("next_attempt_at")
        .values_list("id", "attempts")[:SWEEP_BATCH]
    )


def event_of(*, merchant: Merchant, event_id: str) -> Event | None:
    """The merchant's event with its deliveries (and their attempt counts), or None: another merchant's is None."""
    return (Event.objects.filter(merchant=merchant, public_id=event_id)
            .prefetch_related(Prefetch("deliveries", queryset=WebhookDelivery.objects.order_by("id"))).first())


def notifications_unprocessed(*, before: dt.datetime) -> list[int]:
    return list(
        ChannelNotification.objects.filter(state=ChannelNotification.State.RECEIVED, received_at__lt=before)
        .order_by("id")
        .values_list("id", flat=True)[:SWEEP_BATCH]
    )


def _page(qs: QuerySet, *, limit: int, starting_after: str | None, cursors: QuerySet) -> tuple[list, bool]:
    """Cursor pagination, newest first: the page after the object ``starting_after``.

    ``cursors`` is what the caller may see (the merchant's own objects, unfiltered, so that a row whose status
    changed between two pages still works as a cursor): another merchant's id must not be a valid cursor, or
    the answer would tell that the id exists."""
    if starting_after:
        cursor = cursors.filter(public_id=starting_after).values_list("id", flat=True).first()
        if cursor is None:
            raise cursors.model.DoesNotExist(starting_after)
        qs = qs.filter(id__lt=cursor)
    rows = list(qs.order_by("-id")[: limit + 1])
    return rows[:limit], len(rows) > limit


def order_list(
    *, merchant: Merchant, limit: int, starting_after: str | None = None, status: str | None = None,
    merchant_order_no: str | None = None, created_gte: dt.datetime | None = None, created_lt: dt.datetime | None = None,
) -> tuple[list[Order], bool]:
    qs = Order.objects.filter(merchant=merchant)
    if status:
        qs = qs.filter(status=status)
    if merchant_order_no:
        qs = qs.filter(merchant_order_no=merchant_order_no)
    if created_gte:
        qs = qs.filter(created_at__gte=created_gte)
    if created_lt:
        qs = qs.filter(created_at__lt=created_lt)
    return _page(qs, limit=limit, starting_after=starting_after, cursors=Order.objects.filter(merchant=merchant))


def refund_list(*, order: Order, limit: int, starting_after: str | None = None) -> tuple[list[Refund], bool]:
    qs = Refund.objects.filter(order=order).select_related("order")
    return _page(qs, limit=limit, starting_after=starting_after, cursors=Refund.objects.filter(order=order))


def event_list(
    *, merchant: Merchant, limit: int, starting_after: str | None = None, type: str | None = None
) -> tuple[list[Event], bool]:
    qs = Event.objects.filter(merchant=merchant)
    if type:
        qs = qs.filter(type=type)
    return _page(qs, limit=limit, starting_after=starting_after, cursors=Event.objects.filter(merchant=merchant))
