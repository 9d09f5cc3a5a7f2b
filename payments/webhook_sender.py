"""The webhooks worker's own sender: LISTEN for new deliveries and send each at once, on the worker's threads.

A delivery's first attempt (and a merchant's or ops' re-send) is notified on the outbox's webhook channel when
the state change that made it commits. Every webhooks worker (a Celery worker that consumes the ``webhooks``
queue: ``payments_site/celery.py`` starts this sender in it) listens and sends it itself: no dispatcher
publish, no broker round trip and no Celery task around a POST. A payment sends two (``order.pending``,
``order.succeeded``); as tasks they cost 4.9 ms of the webhooks worker's CPU and 0.8 ms of the dispatcher's per
paid order, sent this way 3.3 ms and none (`make bench-e2e`).

Several webhooks workers all listen; the claim (``services.webhook_deliver``: one UPDATE that skips a row
another has locked and takes only a delivery that is due) lets one of them send it, and the others find
nothing to do. Retries, and first attempts whose notification was lost (sent while no webhooks worker
listened), stay with beat's ``sweep_webhooks``, which sends them as ``deliver_webhook`` tasks to the same
workers; a sender that starts listening sends the due deliveries it finds in the rows at once.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connection
from django.utils import timezone
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from payments import observability, outbox, selectors, services
from payments.listener import ALWAYS, Listener

log = logging.getLogger(__name__)

_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer(__name__)


class WebhookSender(Listener):
    """Send each delivery notified on ``outbox.WEBHOOK_CHANNEL`` on ``pool``; every sender active.

    The pool is the webhooks worker's own (Celery's threads pool), so that its threads, and the database
    connections they hold, are the budget for sends as for tasks. At most ``waiting`` deliveries are handed to
    it at once: beyond that the listener waits, and notifications queue in PostgreSQL, so that a receiver that
    hangs slows its sender down instead of filling its memory.
    """

    channel = outbox.WEBHOOK_CHANNEL
    role = "webhook sender"
    application_name = "payments-webhooks"
    # The waits before each new try of a delivery after a database error.
    database_retry_s: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)

    def __init__(self, *, pool: ThreadPoolExecutor, waiting: int, stop: threading.Event | None = None) -> None:
        super().__init__(stop=stop)
        self.pool = pool
        self._slots = threading.BoundedSemaphore(waiting)

    def dispatch(self, payload: str) -> bool:
        parsed = outbox.parse(payload)
        if parsed is None or parsed[0] != outbox.DELIVER_WEBHOOK:
            log.warning("webhook sender ignored notification %r: not a webhook delivery", payload[:200])
            return False
        _, traceparent, delivery_id = parsed
        return self.submit(delivery_id, traceparent=traceparent)

    def catch_up(self) -> int:
        try:
            due = selectors.webhooks_due(now=timezone.now())
        except DatabaseError as exc:
            log.warning("webhook sender could not catch up (%s); the sweep will", exc, extra=ALWAYS)
            return 0
        finally:
            connection.close()  # Django's connection of the listening thread: it does not use it again
        sent = sum(self.submit(delivery_id) for delivery_id in due)
        log.info("webhook sender caught up: %d due deliveries found in the rows", sent, extra=ALWAYS)
        return sent

    def submit(self, delivery_id: int, *, traceparent: str = "-") -> bool:
        """Hand the delivery to the pool, once a slot is free; False if stopped first."""
        while not self._slots.acquire(timeout=self.poll_s):
            if self.stop.is_set():
                return False
        try:
            self.pool.submit(self._send, delivery_id, traceparent)
        except RuntimeError:  # the pool was shut down (the worker is stopping): the sweep sends it
            self._slots.release()
            return False
        return True

    def _send(self, delivery_id: int, traceparent: str) -> None:
        # What Celery's signals do around a task (payments_site/celery.py): a fresh log context, and this thread's
        # database connection kept up to CONN_MAX_AGE, replaced if it broke.
        token = otel_context.attach(_propagator.extract({"traceparent": traceparent}))
        observability.clear()
        observability.bind(task="deliver_webhook")
        try:
            for delay in (*self.database_retry_s, None):
                close_old_connections()
                try:
                    with _tracer.start_as_current_span("deliver_webhook", kind=trace.SpanKind.CONSUMER):
                        services.webhook_deliver(delivery_id=delivery_id)
                    return
                except (OperationalError, InterfaceError) as exc:
                    # The database went away (a restart, a failover): as the deliver_webhook task does, try again
                    # on a new connection. A claim that failed claimed nothing; an attempt already POSTed is
                    # recorded by webhook_deliver itself, and only one it could not record waits out its lease.
                    if delay is None or self.stop.is_set():
                        raise
                    log.warning("webhook sender: delivery %s: database error (%s); trying again in %ss",
                                delivery_id, exc, delay)
                    self.stop.wait(delay)
        except Exception:
            # The claim's lease makes the delivery due again once it runs out; the sweep then sends it.
            log.exception("webhook sender: delivery %s failed; the sweep will send it again", delivery_id)
        finally:
            close_old_connections()
            observability.clear()
            otel_context.detach(token)
            self._slots.release()
