"""Prometheus metrics of the payment engine.

Counters are recorded where things happen (services, task signals, the outbox dispatcher) in whichever
process does them; every process of a host writes them to the shared multiprocess directory and ``/metrics``
adds them up. Gauges of state (open orders, the oldest pending order, queue depth, database connections, the
active outbox dispatcher, the webhook backlog) are read at scrape time by ``StateCollector``, so that no request
pays for them. Reconciliation's are in ``reconciliation.metrics``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from functools import cache

import redis
from django.conf import settings
from django.db import connection
from django.db.models import Count, Min, Q
from django.utils import timezone
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

ORDERS = Counter("payments_orders", "Orders that entered a status.", ["channel", "status"])
REFUNDS = Counter("payments_refunds", "Refunds that entered a status.", ["channel", "status"])
NOTIFICATIONS = Counter(
    "payments_notifications", "Channel notifications, accepted or rejected, by reason.",
    ["channel", "result", "reason"],
)
TASK_RETRIES = Counter("payments_task_retries", "Task retries scheduled, by task and reason.", ["task", "reason"])
TASK_EXHAUSTED = Counter(
    "payments_task_exhausted", "Tasks that gave up (retries exhausted or an error not retried).", ["task", "reason"]
)
OUTBOX_PUBLISHES = Counter(
    "payments_outbox_publishes",
    "Tasks the outbox dispatcher handed to the broker, by task and result: sent, failed (the sweeps enqueue "
    "them again), ignored (a malformed notification).",
    ["task", "result"],
)
WEBHOOK_DELIVERIES = Counter(
    "payments_webhook_deliveries", "Merchant webhook delivery attempts by outcome: delivered, retrying, failed.",
    ["outcome"],
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "payments_webhook_attempt_seconds", "How long a merchant webhook POST took, answered or not.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15),
)

OPEN_ORDER_STATES = ("created", "pending")
OPEN_REFUND_STATES = ("pending", "processing")
# kombu's Redis transport keeps a queue's priority levels in separate lists: "<queue>", "<queue>\x06\x163", …
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


class StateCollector(Collector):
    """Gauges read at scrape time: small queries on indexed open states and catalogs, one Redis round trip."""

    def collect(self) -> Iterator[Metric]:
        for read in (self._orders, self._refunds, self._webhooks, self._queues, self._database, self._outbox):
            try:
                yield from read()
            except Exception as exc:  # a scrape must answer even with Redis or Postgres down
                log.warning("metrics: %s failed: %s", read.__name__, exc)

    def _orders(self) -> Iterator[Metric]:
        from payments.models import Order

        open_orders = GaugeMetricFamily(
            "payments_orders_open", "Orders in an open state.", labels=["channel", "status"]
        )
        oldest = GaugeMetricFamily(
            "payments_order_oldest_pending_age_seconds", "Age of the oldest pending order.", labels=["channel"]
        )
        overdue = GaugeMetricFamily(
            "payments_orders_overdue", "Open orders more than 10 minutes past their expiry (the sweep is behind).",
            labels=["channel", "status"],
        )
        now = timezone.now()
        rows = (Order.objects.filter(status__in=OPEN_ORDER_STATES).values("channel", "status").annotate(
            n=Count("id"), first=Min("created_at"),
            late=Count("id", filter=Q(expires_at__lt=now - dt.timedelta(minutes=10))),
        ))
        for row in rows:
            open_orders.add_metric([row["channel"], row["status"]], row["n"])
            overdue.add_metric([row["channel"], row["status"]], row["late"])
            if row["status"] == "pending":
                oldest.add_metric([row["channel"]], (now - row["first"]).total_seconds())
        yield from (open_orders, oldest, overdue)

    def _refunds(self) -> Iterator[Metric]:
        from payments.models import Refund

        family = GaugeMetricFamily("payments_refunds_open", "Refunds in an open state.", labels=["channel", "status"])
        rows = (Refund.objects.filter(status__in=OPEN_REFUND_STATES).values("order__channel", "status")
                .annotate(n=Count("id")))
        for row in rows:
            family.add_metric([row["order__channel"], row["status"]], row["n"])
        yield family

    def _webhooks(self) -> Iterator[Metric]:
        from payments.models import WebhookDelivery

        now = timezone.now()
        due = WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING, next_attempt_at__lte=now)
        row = due.aggregate(n=Count("id"), first=Min("next_attempt_at"))
        yield GaugeMetricFamily("payments_webhook_backlog", "Webhook deliveries due and not yet attempted.",
                                value=row["n"])
        yield GaugeMetricFamily(
            "payments_webhook_oldest_due_age_seconds", "How long the longest-waiting due webhook delivery has waited.",
            value=(now - row["first"]).total_seconds() if row["first"] else 0,
        )

    def _queues(self) -> Iterator[Metric]:
        from celery import current_app

        client = _broker_redis()
        if client is None:
            return
        names = [queue.name for queue in current_app.conf.task_queues]
        pipe = client.pipeline(transaction=False)
        for name in names:
            for suffix in _PRIORITY_SUFFIXES:
                pipe.llen(name + suffix)
        lengths = pipe.execute()
        family = GaugeMetricFamily("payments_queue_depth", "Messages waiting in a Celery queue.", labels=["queue"])
        for i, name in enumerate(names):
            step = len(_PRIORITY_SUFFIXES)
            family.add_metric([name], sum(lengths[i * step:(i + 1) * step]))
        yield family

    def _database(self) -> Iterator[Metric]:
        # No pool in the process (Django keeps one connection per thread), so the pool that can run out is
        # the server's: connections to our database against max_connections.
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*), current_setting('max_connections')::int FROM pg_stat_activity"
                " WHERE datname = current_database()"
            )
            in_use, maximum = cursor.fetchone()
        yield GaugeMetricFamily("payments_db_connections", "Connections open to our database.", value=in_use)
        yield GaugeMetricFamily("payments_db_connections_max", "The server's max_connections.", value=maximum)

    def _outbox(self) -> Iterator[Metric]:
        from payments import outbox

        yield GaugeMetricFamily(
            "payments_outbox_dispatchers_active",
            "Outbox dispatchers publishing tasks (1; 0 and new work waits for the sweeps).",
            value=outbox.active_dispatchers(),
        )


@cache
def _broker_redis() -> redis.Redis | None:
    from celery import current_app

    url = str(current_app.conf.broker_url or settings.REDIS_URL)
    if not url.startswith(("redis://", "rediss://")):
        return None  # another broker: its own exporter reports queue depth
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
