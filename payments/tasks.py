"""Celery tasks: thin. Each takes ids, calls one service, and owns only its retry policy.

Channel outcomes that mean "try later" (``Retryable``, ``UnknownOutcome``) retry with exponential backoff
and jitter; the services query before they resend, so a retry never makes a second trade or refund. When
the retries run out, the order or refund is flagged for ops instead of being dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Reject, Retry
from django.conf import settings
from django.core.cache import cache
from django.db import OperationalError
from django.utils import timezone

from channels.base import CircuitOpen, Retryable, UnknownOutcome
from payments import idempotency, selectors, services

log = logging.getLogger(__name__)

RETRY_POLICY: dict[str, Any] = {
    "autoretry_for": (Retryable, UnknownOutcome, OperationalError),
    "retry_backoff": settings.TASK_RETRY_BACKOFF_S,
    "retry_backoff_max": settings.TASK_RETRY_BACKOFF_MAX_S,
    "retry_jitter": True,
    "max_retries": settings.TASK_MAX_RETRIES,
    "dont_autoretry_for": (CircuitOpen,),  # held, not retried: HoldWhileOpen
    # Expected outcomes of talking to a channel, not bugs: when the retries run out, FlagOnExhaustion tells
    # ops (one Sentry event, from the "needs attention" line) instead of Celery and Sentry reporting a crash.
    "throws": (Retryable, UnknownOutcome),
}


class HoldWhileOpen(Task):
    """Work for a channel account whose circuit breaker is open is held, not retried: sent again for when the
    breaker may let it through, with the retry count it had (nothing reached the channel, so no retry is
    spent), and nothing is flagged or failed. A held charge still counted an attempt (``charge_attempts``),
    which only makes the next one query the channel before it creates: safe."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.request.called_directly or self.request.is_eager:
            return super().__call__(*args, **kwargs)
        try:
            return self.run(*args, **kwargs)  # the worker's tracer has pushed the request
        except CircuitOpen as exc:
            # Spread the held work past the reopening, so that it does not all meet the half-open breaker at once.
            countdown = (exc.retry_after_s or settings.TASK_RETRY_BACKOFF_S) * random.uniform(1.0, 1.5)
            held = self.signature_from_request(self.request, countdown=countdown, retries=self.request.retries)
            try:
                held.apply_async()
            except Exception as send_error:
                raise Reject(send_error, requeue=False) from exc  # the sweeps send it again
            raise Retry(exc=exc, when=countdown, sig=held) from None


class FlagOnExhaustion(HoldWhileOpen):
    """When a task gives up, leave its order or refund visibly stuck for ops."""

    abstract = True

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        object_id = kwargs.get("order_id", kwargs.get("refund_id", args[0] if args else None))
        reason = f"{self.name.rsplit('.', 1)[-1]}_exhausted:{getattr(exc, 'code', type(exc).__name__)}"
        # WARNING, not ERROR: the flag below logs the one ERROR (and Sentry event) that names the order.
        log.warning("task %s gave up on %s: %s", self.name, object_id, exc, extra={"task": self.name, "key_path": True})
        if object_id is None:
            return
        if self.name.endswith("refund_order"):
            services.refund_flag(refund_id=object_id, reason=reason)
        else:
            services.order_flag(order_id=object_id, reason=reason)


@shared_task(base=FlagOnExhaustion, **RETRY_POLICY)
def charge_order(order_id: int) -> None:
    services.order_charge(order_id=order_id)


@shared_task(base=HoldWhileOpen, **RETRY_POLICY)
def query_order(order_id: int) -> None:
    services.order_query(order_id=order_id)


@shared_task(base=HoldWhileOpen, **RETRY_POLICY)
def expire_order(order_id: int) -> None:
    services.order_expire(order_id=order_id)


@shared_task(base=FlagOnExhaustion, **RETRY_POLICY)
def refund_order(refund_id: int) -> None:
    services.refund_submit(refund_id=refund_id)


@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=settings.TASK_MAX_RETRIES)
def process_notification(notification_id: int) -> None:
    services.notification_apply(notification_id=notification_id)


# No retry policy: a failed attempt is scheduled in the database, and the sweep sends it when it is due.
@shared_task(autoretry_for=(OperationalError,), retry_backoff=True, max_retries=settings.TASK_MAX_RETRIES)
def deliver_webhook(delivery_id: int) -> None:
    services.webhook_deliver(delivery_id=delivery_id)


# -- beat sweeps: rebuild pending work from the database, so a broker that lost everything loses nothing --


def _ago(seconds: int) -> dt.datetime:
    return timezone.now() - dt.timedelta(seconds=seconds)


def _declare_queue_of(task: Task) -> None:
    """Bind again the queue ``task`` is routed to, before a sweep sends work to it. On Redis a queue's binding is
    a key: a FLUSHALL (`make chaos`) deletes it without dropping any connection, so nobody declares it again and
    every message sent to the queue is dropped, until a worker restarts. kombu remembers in memory what each
    process declared and skips a declare, so the binding is written directly (one SADD). On RabbitMQ bindings
    are the server's and go only with their queue: nothing to do."""
    try:
        queue = task.app.amqp.router.route({}, task.name)["queue"]
        with task.app.producer_or_acquire() as producer:
            channel = producer.channel
            if producer.connection.transport.driver_type != "redis":
                return
            exchange = queue.exchange.name
            meta = channel.typeof(exchange).prepare_bind(queue.name, exchange, queue.routing_key,
                                                          queue.binding_arguments)
            channel._queue_bind(exchange, *meta)
    except Exception as exc:  # the send below reports a broker that is down; this must not stop the sweep
        log.warning("could not bind the queue of %s again: %s", task.name, exc)


@shared_task
def sweep_created_orders() -> int:
    ids = selectors.orders_awaiting_charge(before=_ago(settings.SWEEP_CREATED_AFTER_S))
    if ids:
        _declare_queue_of(charge_order)
    for order_id in ids:
        charge_order.delay(order_id)
    return len(ids)


@shared_task
def sweep_pending_orders() -> int:
    ids = selectors.orders_awaiting_news(before=_ago(settings.SWEEP_PENDING_QUERY_AFTER_S))
    if ids:
        _declare_queue_of(query_order)
    for order_id in ids:
        query_order.delay(order_id)
    return len(ids)


@shared_task
def sweep_expired_orders() -> int:
    ids = selectors.orders_expired(now=timezone.now())
    if ids:
        _declare_queue_of(expire_order)
    for order_id in ids:
        expire_order.delay(order_id)
    return len(ids)


@shared_task
def sweep_refunds() -> int:
    ids = selectors.refunds_unfinished(before=_ago(settings.SWEEP_REFUND_AFTER_S))
    if ids:
        _declare_queue_of(refund_order)
    for refund_id in ids:
        refund_order.delay(refund_id)
    return len(ids)


@shared_task
def purge_idempotency_records() -> int:
    return idempotency.idempotency_purge(now=timezone.now())


# How long the sweep trusts a delivery task it queued to be run before it queues another for the same attempt.
def webhook_sweep_key(delivery_id: int, attempts: int) -> str:
    return f"sweep-webhook:{delivery_id}:{attempts}"


@shared_task
def sweep_webhooks() -> int:
    # Retries are only ever sent from here; a first attempt was enqueued by the outbox, and is sent again from here
    # only once it seems lost.
    due = selectors.webhooks_due_attempts(now=timezone.now(),
                                          first_attempt_before=_ago(settings.WEBHOOK_SWEEP_FIRST_ATTEMPT_AFTER_S))
    # Each due attempt is queued once, not at every sweep: it stays due until a worker takes it, so while the
    # webhooks queue was backlogged every sweep added a copy of each (a Redis FLUSHALL in `make chaos`: 165,000
    # copies, fresh deliveries starved behind them). A task lost with Redis loses its key with it; one lost
    # otherwise (a worker killed holding it) is queued again after WEBHOOK_SWEEP_REQUEUE_S.
    if due:
        _declare_queue_of(deliver_webhook)
    sent = 0
    for delivery_id, attempts in due:
        try:
            first = cache.add(webhook_sweep_key(delivery_id, attempts), 1, timeout=settings.WEBHOOK_SWEEP_REQUEUE_S)
        except Exception:  # Redis unreachable: send anyway (a repeat sends nothing twice) rather than not at all
            first = True
        if first:
            deliver_webhook.delay(delivery_id)
            sent += 1
    return sent


@shared_task
def sweep_notifications() -> int:
    ids = selectors.notifications_unprocessed(before=_ago(settings.SWEEP_NOTIFICATION_AFTER_S))
    if ids:
        _declare_queue_of(process_notification)
    for notification_id in ids:
        process_notification.delay(notification_id)
    return len(ids)
