"""The API's JSON shape of orders, refunds and events (API.md). Plain functions: they are on the hot path of
every answer and every event, and must give the same shape in both."""

from __future__ import annotations

import datetime as dt
from typing import Any

from payments.models import Event, Order, Refund, WebhookDelivery


def timestamp(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def order_json(order: Order) -> dict[str, Any]:
    return {
        "id": order.public_id,
        "object": "order",
        "merchant_order_no": order.merchant_order_no,
        "amount": order.amount,
        "currency": order.currency,
        "channel": order.channel,
        "status": order.status,
        "description": order.description,
        "metadata": order.metadata,
        "notify_url": order.notify_url or None,
        "pay_url": order.pay_url or None,
        "channel_trade_no": order.channel_trade_no or None,
        "amount_refunded": order.amount_refunded,
        "failure_code": order.failure_code or None,
        "failure_message": order.failure_message or None,
        "expires_at": timestamp(order.expires_at),
        "paid_at": timestamp(order.paid_at),
        "created_at": timestamp(order.created_at),
        "updated_at": timestamp(order.updated_at),
    }


def refund_json(refund: Refund) -> dict[str, Any]:
    return {
        "id": refund.public_id,
        "object": "refund",
        "order": refund.order.public_id,
        "merchant_refund_no": refund.merchant_refund_no,
        "amount": refund.amount,
        "currency": refund.currency,
        "status": refund.status,
        "reason": refund.reason,
        "channel_refund_no": refund.channel_refund_no or None,
        "failure_code": refund.failure_code or None,
        "failure_message": refund.failure_message or None,
        "created_at": timestamp(refund.created_at),
        "succeeded_at": timestamp(refund.succeeded_at),
    }


def event_with_deliveries_json(event: Event) -> dict[str, Any]:
    """An event as ``GET /api/v1/events/{id}`` shows it: with the state of each delivery chain (API.md)."""
    return {**event_json(event), "deliveries": [delivery_json(d) for d in event.deliveries.all()]}


def delivery_json(delivery: WebhookDelivery) -> dict[str, Any]:
    return {
        "endpoint": delivery.url,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "last_status": delivery.last_status,
        "last_error": delivery.last_error or None,
        "next_attempt_at": timestamp(delivery.next_attempt_at) if delivery.state == "pending" else None,
        "created_at": timestamp(delivery.created_at),
        "delivered_at": timestamp(delivery.delivered_at),
    }


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.public_id,
        "object": "event",
        "type": event.type,
        "created_at": timestamp(event.created_at),
        "data": {"object": event.data},
    }
