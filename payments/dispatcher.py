"""The outbox's dispatcher: LISTEN for the work services enqueue (``payments.outbox``) and publish it to Celery.

One dispatcher is active per database (``python manage.py run_dispatcher``; run two, the other stands by).

Nothing is stored in a notification queue: a notification sent while no dispatcher listens (a restart, a
failover) is gone, as is one the dispatcher cannot publish (the broker is down). The rows say what is
pending, so the dispatcher publishes it again from them when it takes over and when a broker that failed is
back (``Dispatcher.catch_up``); behind that, the beat sweeps in ``payments.tasks`` do the same, as they do for
a broker that restarts empty. Every kind of work has its sweep: ``sweep_created_orders`` for
``charge_order``, ``sweep_refunds`` for ``refund_order``, ``sweep_notifications`` for ``process_notification``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import psycopg
from celery import current_app
from django.db import DatabaseError, connection
from django.utils import timezone
from opentelemetry import context as otel_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from payments import metrics, outbox, selectors
from payments.outbox import CHANNEL, DISPATCHER_LOCK_KEY, TASKS

log = logging.getLogger(__name__)

_propagator = TraceContextTextMapPropagator()
# Which dispatcher is active is rare news that ops need: never sampled away (payments_site.logs).
_ALWAYS = {"key_path": True}


def conninfo() -> dict[str, Any]:
    """Connection parameters of Django's default database, for a psycopg connection of our own."""
    params = connection.get_connection_params()
    for django_only in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(django_only, None)
    # Keepalives both ways: a LISTENing connection only reads, so a peer that vanished is noticed by TCP or
    # never. Ours reconnects; the server's ends the session of a dispatcher that vanished, and so frees its
    # advisory lock for a standby (otherwise held until the server's own keepalive, two hours by default).
    server = "-c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3"
    return {
        **params, "application_name": "payments-dispatcher",
        "options": f"{params.get('options', '')} {server}".strip(),
        "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
    }


class Dispatcher:
    """LISTEN on ``CHANNEL`` and publish each notification's task to Celery.

    One dispatcher is active per database: it holds a session advisory lock, and the others stand by and
    try the lock every ``standby_retry_s``. A standby does not LISTEN (PostgreSQL keeps the queue for every
    listener, and one that never reads would hold it); the one that takes over catches up from the rows.
    """

    poll_s = 1.0  # how often the loops look at ``stop``
    broker_retry_s = 5.0  # after a failed publish, how long the broker is taken for down

    def __init__(self, *, stop: threading.Event | None = None, standby_retry_s: float = 5.0) -> None:
        self.stop = stop or threading.Event()
        self.standby_retry_s = standby_retry_s
        self.listening = threading.Event()  # set while this one is the active dispatcher
        self._broker_down_until = 0.0
        self._missed = False  # a publish failed: catch up from the rows once the broker is back

    def run(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                with psycopg.connect(**conninfo(), autocommit=True) as conn:
                    if self._wait_for_lock(conn):
                        conn.execute(f"LISTEN {CHANNEL}")
                        self.listening.set()
                        log.info("dispatcher active: listening on %s", CHANNEL, extra=_ALWAYS)
                        self.catch_up()
                        backoff = 1.0
                        self._listen(conn)
            except psycopg.Error as exc:
                log.warning("dispatcher: database connection lost (%s); reconnecting in %.0fs", exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            finally:
                self.listening.clear()
        log.info("dispatcher stopped", extra=_ALWAYS)

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
                outbox.DELIVER_WEBHOOK: selectors.webhooks_due(now=now),
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

    def _wait_for_lock(self, conn: psycopg.Connection) -> bool:
        said = False
        while not self.stop.is_set():
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", [DISPATCHER_LOCK_KEY]).fetchone()
            if row and row[0]:
                return True
            if not said:
                log.info("dispatcher on standby: another one is active; trying every %ss", self.standby_retry_s,
                         extra=_ALWAYS)
                said = True
            self.stop.wait(self.standby_retry_s)
        return False

    def _listen(self, conn: psycopg.Connection) -> None:
        # psycopg keeps what arrives between two notifies() calls, so leaving the generator to look at
        # ``stop`` loses nothing.
        while not self.stop.is_set():
            for notify in conn.notifies(timeout=self.poll_s):
                self.dispatch(notify.payload)
                if self.stop.is_set():
                    break
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
            # By name: routed by celeryconfig's task_routes as apply_async would be.
            current_app.send_task(TASKS[name], args=(object_id,))
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
