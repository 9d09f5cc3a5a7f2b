"""The outbox's dispatcher: LISTEN for the work services enqueue (``payments.outbox``) and publish it to Celery.

One dispatcher is active per database (``python manage.py run_dispatcher``; run two, the other stands by).

Nothing is stored in a notification queue: a notification sent while no dispatcher listens (a restart, a
failover) is gone, as is one the dispatcher cannot publish (the broker is down). The rows say what is
pending, so the dispatcher publishes it again from them when it takes over and when a broker that failed is
back (``Dispatcher.catch_up``); behind that, the beat sweeps in ``payments.tasks`` do the same, as they do for
a broker that restarts empty. Every kind of work has its sweep: ``sweep_created_orders`` for
``charge_order``, ``sweep_refunds`` for ``refund_order``, ``sweep_notifications`` for ``process_notification``.

Webhook deliveries are not published here: they are notified on a channel of their own, which the webhooks
workers listen to themselves (``payments.webhook_sender``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from celery import current_app
from django.db import DatabaseError, connection
from django.utils import timezone
from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from payments import metrics, outbox, selectors
from payments.listener import ALWAYS as _ALWAYS
from payments.listener import Listener, conninfo
from payments.outbox import CHANNEL, DISPATCHER_LOCK_KEY, TASKS

__all__ = ["Dispatcher", "conninfo", "run_dispatcher"]

log = logging.getLogger(__name__)

_propagator = TraceContextTextMapPropagator()


class Dispatcher(Listener):
    """LISTEN on ``CHANNEL`` and publish each notification's task to Celery; one active per database."""

    channel = CHANNEL
    role = "dispatcher"
    application_name = "payments-dispatcher"
    lock_key = DISPATCHER_LOCK_KEY
    broker_retry_s = 5.0  # after a failed publish, how long the broker is taken for down

    def __init__(self, *, stop: threading.Event | None = None, standby_retry_s: float = 5.0) -> None:
        super().__init__(stop=stop, standby_retry_s=standby_retry_s)
        self._broker_down_until = 0.0
        self._missed = False  # a publish failed: catch up from the rows once the broker is back

    def catch_up(self) -> int:
        """Publish the work whose notification may have been lost: sent while no dispatcher listened, or
        received while the broker was down. Returns how many tasks the broker took.

        Runs once listening (so nothing falls between the two: what was sent before is found in the rows,
        what is sent after arrives as a notification) and again once a broker that failed is back. A task
        sent twice finds its work done. Without this, such work would wait for the sweeps, minutes later.
        """
        now = timezone.now()
        try:
            work = {
                outbox.CHARGE_ORDER: selectors.orders_awaiting_charge(before=now),
                outbox.SUBMIT_REFUND: selectors.refunds_unfinished(before=now),
                outbox.APPLY_NOTIFICATION: selectors.notifications_unprocessed(before=now),
            }
        except DatabaseError as exc:
            log.warning("dispatcher could not catch up (%s); the sweeps will", exc, extra=_ALWAYS)
            return 0
        finally:
            connection.close()  # Django's connection of this thread: the dispatcher does not use it again
        sent = 0
        for name, ids in work.items():
            for object_id in ids:
                if not self._publish(name, object_id):
                    return sent  # the broker is down again: the next catch-up starts over
                sent += 1
        log.info("dispatcher caught up: %d tasks published from the rows", sent, extra=_ALWAYS)
        return sent

    def tick(self) -> None:
        if self._missed and time.monotonic() >= self._broker_down_until:
            self._missed = False  # a failed publish in catch_up() sets it again
            self.catch_up()

    def dispatch(self, payload: str) -> bool:
        """Publish the task a payload names; True if the broker took it. Never raises."""
        parsed = outbox.parse(payload)
        if parsed is None:
            log.warning("dispatcher ignored notification %r: not <task> <traceparent> <id> of a known task",
                        payload[:200])
            metrics.OUTBOX_PUBLISHES.labels(task="unknown", result="ignored").inc()
            return False
        name, traceparent, object_id = parsed
        # Publish in the request's trace: the Celery producer span becomes its child and carries it on.
        token = otel_context.attach(_propagator.extract({"traceparent": traceparent}))
        try:
            return self._publish(name, object_id)
        finally:
            otel_context.detach(token)

    def _publish(self, name: str, object_id: int) -> bool:
        extra = {"task": TASKS[name], "object_id": object_id}
        if time.monotonic() < self._broker_down_until:
            # Each attempt against a dead broker takes its connect timeouts; skipping for a while keeps the
            # notifications drained, and catch_up() publishes these ids from the rows afterwards.
            log.warning("dispatcher: broker down, %s(%s) not published; it will be from the rows once the broker"
                        " is back", name, object_id, extra=extra)
            metrics.OUTBOX_PUBLISHES.labels(task=name, result="failed").inc()
            self._missed = True
            return False
        try:
            # By name: routed by celeryconfig's task_routes as apply_async would be. The arguments' repr for
            # monitoring is given: Celery's saferepr of them took 40-60 µs of a publish's 300.
            current_app.send_task(TASKS[name], args=(object_id,), argsrepr=f"({object_id},)", kwargsrepr="{}")
        except Exception as exc:  # whatever the broker's client raises, the dispatcher carries on
            self._broker_down_until = time.monotonic() + self.broker_retry_s
            log.warning("dispatcher: publishing %s(%s) failed (%s); it will be from the rows once the broker is"
                        " back", name, object_id, exc, extra=extra)
            metrics.OUTBOX_PUBLISHES.labels(task=name, result="failed").inc()
            self._missed = True
            return False
        metrics.OUTBOX_PUBLISHES.labels(task=name, result="sent").inc()
        return True


def run_dispatcher(*, stop: threading.Event | None = None) -> None:
    """Run a dispatcher until ``stop`` is set; without one, until SIGTERM or SIGINT (main thread only)."""
    if stop is None:
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    Dispatcher(stop=stop).run()
