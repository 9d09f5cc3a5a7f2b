"""Merchant webhooks: a delivery per event and endpoint, attempts on a schedule, redelivery, secret rotation.

A delivery is created with its event, in the transaction of the state change, and enqueued through the outbox.
An attempt is two-phase like a channel call: claim the delivery and commit, POST outside any transaction, then
record the answer in a new short transaction. The claim pushes ``next_attempt_at`` out by a lease, so a task
that runs twice finds nothing due, and a worker that dies mid-POST leaves the delivery due again once the lease
ends: the beat sweep (``sweep_webhooks``) sends it. Retries are scheduled in the database
(``WEBHOOK_RETRY_SCHEDULE_S``, with jitter), never as broker countdowns.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import random
import secrets
import time
from functools import cache
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from payments import db, metrics, outbox, webhook_http
from payments.models import Event, Merchant, Order, WebhookAttempt, WebhookDelivery
from payments.observability import bind
from payments.representations import event_json
from payments.services.errors import NoEndpoint

log = logging.getLogger(__name__)

State = WebhookDelivery.State


def endpoint_of(order: Order | None, merchant: Merchant) -> str:
    return (order.notify_url if order is not None else "") or merchant.default_notify_url


def delivery_create(*, event: Event, url: str) -> WebhookDelivery:
    """A new delivery chain of ``event`` to ``url``, due now, enqueued when the caller's transaction commits."""
    delivery = WebhookDelivery.objects.create(event=event, url=url, next_attempt_at=timezone.now())
    outbox.enqueue(outbox.DELIVER_WEBHOOK, delivery.pk)
    return delivery


def new_delivery(event: Event, order: Order | None) -> WebhookDelivery | None:
    """The delivery (not saved, due now) of a new ``event``, if the merchant has an endpoint. The caller writes it
    with the event, in the transaction of the state change, and enqueues it (``payments.services.transitions``)."""
    if order is not None and order.notify_url:
        url = order.notify_url  # the merchant's default is not read when the order names its own
    else:
        url = endpoint_of(order, Merchant.objects.only("default_notify_url").get(pk=event.merchant_id))
    if not url:
        return None
    return WebhookDelivery(event=event, url=url, next_attempt_at=timezone.now())


def event_redeliver(*, event: Event) -> WebhookDelivery:
    """Start a new delivery chain for ``event`` (the merchant's or ops' re-send); the old chains stay."""
    url = endpoint_of(event.order, event.merchant)
    if not url:
        raise NoEndpoint("the event's order has no notify_url and the merchant no default endpoint")
    with transaction.atomic():
        delivery = delivery_create(event=event, url=url)
    log.info("redelivery of %s to %s", event.public_id, url, extra={"event_id": event.public_id, "key_path": True})
    return delivery


def webhook_secret_rotate(*, merchant_id: int) -> str:
    """A new webhook secret for the merchant, returned once. The previous one keeps signing (a second signature)
    for ``WEBHOOK_SECRET_GRACE_S``, so that the merchant can switch its verification without losing a webhook."""
    new_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    with transaction.atomic():
        merchant = Merchant.objects.select_for_update().get(pk=merchant_id)
        merchant.previous_webhook_secret = merchant.webhook_secret
        merchant.previous_webhook_secret_until = timezone.now() + dt.timedelta(seconds=settings.WEBHOOK_SECRET_GRACE_S)
        merchant.webhook_secret = new_secret
        merchant.save(update_fields=["webhook_secret", "previous_webhook_secret", "previous_webhook_secret_until"])
    log.warning("webhook secret of %s rotated", merchant.public_id, extra={"merchant_id": merchant.public_id})
    return new_secret


def signing_secrets(merchant: Merchant, *, now: dt.datetime) -> list[str]:
    """The secrets that sign now: the current one, and the previous one during its grace period."""
    valid = [merchant.webhook_secret]
    until = merchant.previous_webhook_secret_until
    if merchant.previous_webhook_secret and until is not None and until > now:
        valid.append(merchant.previous_webhook_secret)
    return valid


def _lease() -> dt.timedelta:
    # Longer than any attempt can take, so that a live attempt is never taken for lost.
    return dt.timedelta(seconds=settings.WEBHOOK_TIMEOUT_S + 30)


def retry_delay(attempts: int) -> dt.timedelta | None:
    """How long after failed attempt number ``attempts`` the next one is due, or None after the last."""
    schedule = settings.WEBHOOK_RETRY_SCHEDULE_S
    if attempts > len(schedule):
        return None
    # Up to 10 % later, so that the deliveries of a receiver that was down do not all come back at once.
    return dt.timedelta(seconds=schedule[attempts - 1] * random.uniform(1.0, 1.1))


@cache
def _claim_sql() -> str:
    delivery, event, merchant = (model._meta.db_table for model in (WebhookDelivery, Event, Merchant))
    return (
        f"WITH claimed AS (UPDATE {delivery} SET attempts = attempts + 1, next_attempt_at = %s, updated_at = %s"
        f" WHERE id = (SELECT id FROM {delivery} WHERE id = %s AND state = %s AND next_attempt_at <= %s"
        f" FOR UPDATE SKIP LOCKED) RETURNING id, event_id, url, attempts)"
        f" SELECT claimed.id, claimed.url, claimed.attempts, e.id, e.public_id, e.type, e.data, e.created_at,"
        f" e.merchant_id, m.public_id, m.webhook_secret, m.previous_webhook_secret, m.previous_webhook_secret_until"
        f" FROM claimed JOIN {event} e ON e.id = claimed.event_id JOIN {merchant} m ON m.id = e.merchant_id"
    )


def _claim(delivery_id: int, now: dt.datetime) -> WebhookDelivery | None:
    """Take the delivery's due attempt: push ``next_attempt_at`` out by the lease and count the attempt, and read
    what the POST needs (the event, the merchant's secrets). One statement, committed on its own; None if the
    delivery is not due, done, or another worker has it right now."""
    row = db.fetch_one(_claim_sql(), [now + _lease(), now, delivery_id, State.PENDING, now])
    if row is None:
        return None
    (pk, url, attempts, event_id, event_public_id, event_type, data, event_created_at, merchant_id,
     merchant_public_id, secret, previous_secret, previous_until) = row
    merchant = Merchant(id=merchant_id, public_id=merchant_public_id, webhook_secret=secret,
                        previous_webhook_secret=previous_secret, previous_webhook_secret_until=previous_until)
    event = Event(id=event_id, public_id=event_public_id, type=event_type, data=json.loads(data),
                  created_at=event_created_at, merchant=merchant)
    return WebhookDelivery(id=pk, event=event, url=url, state=State.PENDING, attempts=attempts,
                           next_attempt_at=now + _lease())


def webhook_deliver(*, delivery_id: int) -> WebhookAttempt | None:
    """Make the attempt that is due, if one is (the delivery task's body). Returns the attempt made, if any."""
    now = timezone.now()
    delivery = _claim(delivery_id, now)
    if delivery is None:
        return None
    event, merchant = delivery.event, delivery.event.merchant
    bind(merchant_id=merchant.public_id)
    body = json.dumps(event_json(event), separators=(",", ":")).encode()
    # The scheme was checked when the URL was given (https with live keys); the address is checked again here.
    answer = webhook_http.post(delivery.url, body, msg_id=event.public_id,
                               secrets=signing_secrets(merchant, now=now), live=False)
    return _record_made(delivery, number=delivery.attempts, at=now, answer=answer)


# The waits before each new try to record an attempt that was made, after a database error.
RECORD_RETRY_S: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)


def _record_made(delivery: WebhookDelivery, *, number: int, at: dt.datetime,
                 answer: webhook_http.Answer) -> WebhookAttempt:
    """Record an attempt whose POST was made, trying again on a new connection if the database went away
    meanwhile (a restart, a failover). Its outcome is known: left unrecorded, the delivery would stay claimed until
    its lease ran out (WEBHOOK_TIMEOUT_S + 30 s), and a delivered event would then be sent a second time."""
    for delay in (*RECORD_RETRY_S, None):
        try:
            return _record(delivery, number=number, at=at, answer=answer)
        except (OperationalError, InterfaceError) as exc:
            if delay is None or connection.in_atomic_block:
                raise
            log.warning("webhook %s attempt %d made, not recorded yet: database error (%s); trying again in %ss",
                        delivery.event.public_id, number, exc, delay)
            connection.close()  # the next statement connects again
            time.sleep(delay)
    raise AssertionError("unreachable")


def _record(delivery: WebhookDelivery, *, number: int, at: dt.datetime, answer: webhook_http.Answer) -> WebhookAttempt:
    """Record attempt ``number`` of the delivery this worker claimed (its lease keeps others off it): the delivery's
    changed columns and the attempt's row, in one statement, without reading the delivery again."""
    now = timezone.now()
    changes: dict[str, Any] = {"last_status": answer.status, "last_error": answer.error}
    if answer.delivered:
        changes.update(state=State.DELIVERED, delivered_at=now, next_attempt_at=None)
        outcome = "delivered"
    elif (delay := retry_delay(number)) is not None:
        changes.update(next_attempt_at=now + delay)
        outcome = "retrying"
    else:
        changes.update(state=State.FAILED, next_attempt_at=None)
        outcome = "failed"
    for name, value in changes.items():
        setattr(delivery, name, value)
    attempt = WebhookAttempt(delivery=delivery, number=number, at=at, http_status=answer.status,
                             latency_ms=answer.latency_ms, error=answer.error)
    rows = db.Statement()
    rows.update(delivery, fields=[*changes, "updated_at"])
    rows.insert(attempt)
    rows.run()
    metrics.WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
    metrics.WEBHOOK_ATTEMPT_SECONDS.observe(answer.latency_ms / 1000)
    extra = {"event_id": delivery.event.public_id, "attempt": number, "outcome": outcome}
    if outcome == "failed":
        log.error("webhook %s to %s failed for good after %d attempts: %s", delivery.event.public_id, delivery.url,
                  number, answer.error, extra={**extra, "key_path": True})
    elif outcome == "retrying":
        log.warning("webhook %s to %s attempt %d: %s; next at %s", delivery.event.public_id, delivery.url, number,
                    answer.error, delivery.next_attempt_at, extra=extra)
    else:
        # DEBUG: the attempt's row says it, and the delivered count; one line per event would only repeat them.
        log.debug("webhook %s delivered to %s (attempt %d)", delivery.event.public_id, delivery.url, number,
                  extra=extra)
    return attempt
