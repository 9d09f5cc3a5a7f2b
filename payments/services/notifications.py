"""Inbound channel notifications: verify and store (the callback view), then apply (the callback task)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from django.db import IntegrityError, transaction
from django.utils import timezone

from channels.base import InvalidNotification, Notification, notification_from_dict, notification_to_dict
from channels.registry import accounts
from payments import db, metrics, outbox
from payments.models import ChannelNotification, Order, Refund
from payments.observability import bind, current_trace_id, link_origin_trace
from payments.services.orders import apply_trade, channel_of
from payments.services.refunds import apply_refund
from payments.services.transitions import Source, bind_order

log = logging.getLogger(__name__)

SIGNATURE_HEADERS = ("signature", "authorization")


def storable_text(text: str) -> str:
    """``text`` as PostgreSQL can store it: a NUL (which no text or jsonb column holds) as the visible escape
    ``\\x00``, as bytes that are not UTF-8 already are (``backslashreplace``). What arrived is kept, garbage
    included, for ops to read."""
    return text.replace("\x00", "\\x00")


def _verified(channel: str, headers: Mapping[str, str], body: bytes) -> tuple[Notification, str]:
    """The notification as the first of the channel's accounts whose keys verify it parses it, and that account.
    All accounts share the callback URL; a notification no account verifies is the primary's refusal."""
    refusal: InvalidNotification | None = None
    for adapter in accounts(channel):
        try:
            return adapter.parse_notification(headers=headers, body=body), adapter.account
        except InvalidNotification as invalid:
            refusal = refusal or invalid
    raise refusal or InvalidNotification("no_account")


def notification_receive(*, channel: str, headers: Mapping[str, str], body: bytes) -> tuple[ChannelNotification, bool]:
    """Verify and store an inbound notification, and enqueue its processing. Returns (row, accepted).

    A notification that fails verification is stored as rejected with the reason and changes nothing.
    A repeat of one already stored (the channel's retries) is accepted without storing it again.
    """
    bind(channel=channel)
    kept_headers = {k: storable_text(v) for k, v in headers.items()
                    if not any(word in k.lower() for word in SIGNATURE_HEADERS)}
    text = storable_text(body.decode("utf-8", errors="backslashreplace"))
    try:
        parsed, account = _verified(channel, headers, body)
    except InvalidNotification as invalid:
        row = ChannelNotification.objects.create(
            channel=channel, headers=kept_headers, body=text, state=ChannelNotification.State.REJECTED,
            reason=invalid.reason, trace_id=current_trace_id(),
        )
        log.warning("rejected %s notification: %s", channel, invalid.reason,
                    extra={"channel": channel, "key_path": True})
        metrics.NOTIFICATIONS.labels(channel=channel, result="rejected", reason=invalid.reason).inc()
        return row, False
    order = db.get(Order, public_id=parsed.out_trade_no)
    if order is not None:
        # The notification has its own trace; tie it to the one that created the order.
        bind(order_id=order.public_id)
        link_origin_trace(order.trace_id)
    row = ChannelNotification(
        channel=channel,
        channel_notification_id=parsed.notification_id,
        headers=kept_headers,
        body=text,
        payload={**notification_to_dict(parsed), "account": account},
        order=order,
        trace_id=current_trace_id(),
    )
    try:
        db.Statement().insert(row).run(enqueue=outbox.APPLY_NOTIFICATION)  # the row and its enqueue, one statement
    except IntegrityError:
        row = ChannelNotification.objects.get(channel=channel, channel_notification_id=parsed.notification_id)
        metrics.NOTIFICATIONS.labels(channel=channel, result="accepted", reason="duplicate").inc()
        return row, True
    log.info("accepted %s notification for %s", channel, parsed.out_trade_no,
             extra={"channel": channel, "key_path": True})
    metrics.NOTIFICATIONS.labels(channel=channel, result="accepted", reason="new").inc()
    return row, True


def notification_apply(*, notification_id: int) -> None:
    """Apply a stored, verified notification (the callback task's body). A repeat is a no-op."""
    with transaction.atomic():
        row = db.locked(ChannelNotification, pk=notification_id)
        if row is None or row.state != ChannelNotification.State.RECEIVED:
            return
        assert row.payload is not None  # a received row was verified and parsed
        notification = notification_from_dict(row.payload)
        order = db.locked(Order, public_id=notification.out_trade_no)
        bind(channel=row.channel)
        if order is not None:
            bind_order(order)
            link_origin_trace(order.trace_id)
        reason = ""
        if notification.trade is None and notification.refund is None:
            pass  # verified, acknowledged, nothing to act on
        elif order is None or order.channel != row.channel:
            reason = "unknown_order"
        elif row.payload.get("account", channel_of(order).account) != channel_of(order).account:
            reason = "wrong_account"  # verified by one of our accounts, about an order placed with another
        elif notification.trade is not None:
            trade = notification.trade
            if trade.amount != order.amount or trade.currency != order.currency:
                reason = "amount_mismatch"
            else:
                apply_trade(order, trade, Source.CALLBACK)
        elif notification.refund is not None:
            refund = Refund.objects.select_for_update().filter(
                order=order, public_id=notification.refund.out_refund_no
            ).first()
            if refund is None:
                reason = "unknown_refund"
            else:
                refund.order = order
                apply_refund(order, refund, notification.refund, Source.CALLBACK)
        row.state = ChannelNotification.State.REJECTED if reason else ChannelNotification.State.PROCESSED
        row.reason = reason
        row.processed_at = timezone.now()
        db.Statement().update(row, fields=["state", "reason", "processed_at"]).run(savepoint=False)
    if reason:
        log.error("notification %s not applied: %s", row.pk, reason, extra={"channel": row.channel, "key_path": True})
        metrics.NOTIFICATIONS.labels(channel=row.channel, result="rejected", reason=reason).inc()
