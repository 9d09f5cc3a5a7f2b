"""An order's whole story for its admin page, in time order: its transitions and its refunds' (with who or what
did them), the channel's notifications (with their verification result), the events merchants heard and each
delivery's attempts, and the staff's actions. A handful of queries, whatever the order's history."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import Prefetch
from django.urls import reverse
from django.utils.html import format_html

from channels.money import format_money
from payments.models import ChannelNotification, Event, Order, TransitionLog, WebhookDelivery
from payments.services.admin_actions import ADMIN_ACTION

# What a notification's state says of its verification.
VERIFICATION: dict[str, str] = {
    ChannelNotification.State.RECEIVED: "verified, not applied yet",
    ChannelNotification.State.PROCESSED: "verified and applied",
    ChannelNotification.State.REJECTED: "rejected",
}


@dataclass
class Chapter:
    at: dt.datetime
    kind: str  # transition, action, notification, event
    what: str
    who: str = ""
    notes: list[str] = field(default_factory=list)
    trace_id: str = ""
    link: str = ""
    attempts: list[dict[str, Any]] = field(default_factory=list)  # an event's deliveries' attempts
    event_pk: int | None = None

    @property
    def trace_url(self) -> str:
        return trace_url(self.trace_id)


def trace_url(trace_id: str) -> str:
    """The trace's page in the tracing UI (``TRACE_URL_TEMPLATE``), or "" without a template or a trace."""
    template = getattr(settings, "TRACE_URL_TEMPLATE", "")
    return template.format(trace_id=trace_id) if template and trace_id else ""


def trace_link(trace_id: str) -> str:
    url = trace_url(trace_id)
    return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', url, trace_id) if url else ""


def _who(row: TransitionLog) -> str:
    by = row.detail.get("by") if isinstance(row.detail, dict) else None
    return f"{by} ({row.source})" if by else row.source


def _detail_notes(row: TransitionLog) -> list[str]:
    if not isinstance(row.detail, dict):
        return []
    return [f"{key}: {value}" for key, value in row.detail.items() if key not in ("by", "action", "outcome")]


def order_story(order: Order) -> list[Chapter]:
    refunds = {r.public_id: r for r in order.refunds.all()}
    chapters: list[Chapter] = []
    for row in TransitionLog.objects.filter(object_id__in=[order.public_id, *refunds]).order_by("id"):
        subject = "" if row.object_id == order.public_id else f"refund {row.object_id}: "
        if row.transition == ADMIN_ACTION:
            detail = row.detail if isinstance(row.detail, dict) else {}
            what = f"{subject}{detail.get('action', '?')}: {detail.get('outcome', '')}"
            chapters.append(Chapter(at=row.created_at, kind="action", what=what, who=_who(row),
                                    notes=_detail_notes(row), trace_id=row.trace_id))
            continue
        if row.transition == "create":
            what = f"{subject}created ({row.to_state})"
            refund = refunds.get(row.object_id)
            if refund is not None:
                what += f", {format_money(refund.amount, refund.currency)}"
                if refund.reason:
                    what += f": {refund.reason}"
            elif not subject:
                what += f", {format_money(order.amount, order.currency)} via {order.channel}"
        elif row.from_state == row.to_state:
            what = f"{subject}{row.transition} (stays {row.to_state})"
        else:
            what = f"{subject}{row.from_state} → {row.to_state} ({row.transition})"
        chapters.append(Chapter(at=row.created_at, kind="transition", what=what, who=_who(row),
                                notes=_detail_notes(row), trace_id=row.trace_id))

    for n in order.notifications.all():
        verdict = VERIFICATION.get(n.state, n.state)
        if n.reason:
            verdict += f" ({n.reason})"
        payload = n.payload if isinstance(n.payload, dict) else {}
        notes = [f"{key}: {payload[key]}" for key in ("kind", "status", "amount", "channel_trade_no") if key in payload]
        chapters.append(Chapter(
            at=n.received_at, kind="notification", what=f"{n.channel} notification: {verdict}",
            who=n.channel, notes=notes, trace_id=n.trace_id,
            link=reverse("admin:payments_channelnotification_change", args=[n.pk]),
        ))

    deliveries = Prefetch("deliveries",
                          queryset=WebhookDelivery.objects.order_by("id").prefetch_related("attempt_rows"))
    for event in Event.objects.filter(order=order).order_by("id").prefetch_related(deliveries):
        attempts = []
        for delivery in event.deliveries.all():
            for attempt in delivery.attempt_rows.all():
                attempts.append({"url": delivery.url, "number": attempt.number, "at": attempt.at,
                                 "status": attempt.http_status, "latency_ms": attempt.latency_ms,
                                 "error": attempt.error})
        states = ", ".join(f"{d.state} to {d.url}" for d in event.deliveries.all()) or "no endpoint: not delivered"
        chapters.append(Chapter(
            at=event.created_at, kind="event", what=f"event {event.type} ({event.public_id})", who="merchant webhook",
            notes=[states], attempts=attempts, event_pk=event.pk,
            link=reverse("admin:payments_event_change", args=[event.pk]),
        ))
    # Same instant: the order of writing (transitions before the event they cause).
    return sorted(chapters, key=lambda c: c.at)
