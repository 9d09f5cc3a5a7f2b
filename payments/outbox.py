"""Enqueueing work through PostgreSQL: a ``pg_notify`` in the writing transaction, published by the dispatcher.

A service that must start a task (charge an order, submit a refund, apply a channel notification) does not
talk to the broker. It sends a notification on ``CHANNEL`` in its own transaction, and PostgreSQL delivers it
only when that transaction commits: "enqueue only after commit" is kept by the database, and the request
pays one statement on the connection it already holds instead of a round trip to Redis. The dispatcher
(``payments.dispatcher``, ``python manage.py run_dispatcher``) LISTENs and publishes each task to Celery.

This module owns the names of that work and the payload format; it imports nothing of the tasks, so that
the services, which enqueue, need not know them either.

The payload is ``"<work> <traceparent or -> <id>"``. The traceparent carries the request's trace to the
dispatcher, whose Celery producer span continues it into the worker.

Cost to know: PostgreSQL serialises the commits of transactions that sent a notification (a lock held
through the commit keeps the queue in commit order), so they do not scale with clients as plain commits
do: on a development machine, 32 clients made ~3,800 such commits/s against ~11,700 plain ones. It is a
ceiling for the whole server, lower where WAL flushes are slower: keep notifications to the few tasks
that need them.
"""

from __future__ import annotations

import re

from django.db import connection
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

CHANNEL = "payments_tasks"
# Webhook deliveries have their own channel: the webhooks workers listen to it and send them themselves
# (``payments.webhook_sender``), without a hop through the dispatcher and the broker.
WEBHOOK_CHANNEL = "payments_webhooks"

# The work that may be enqueued this way, each by the name in the payload; each takes the id of its row.
CHARGE_ORDER = "charge_order"
SUBMIT_REFUND = "refund_order"
APPLY_NOTIFICATION = "process_notification"
DELIVER_WEBHOOK = "deliver_webhook"
# Name → the Celery task the dispatcher sends (by name: ``payments.tasks`` defines them).
TASKS = {
    CHARGE_ORDER: "payments.tasks.charge_order",
    SUBMIT_REFUND: "payments.tasks.refund_order",
    APPLY_NOTIFICATION: "payments.tasks.process_notification",
    DELIVER_WEBHOOK: "payments.tasks.deliver_webhook",
}

# The channel each work is notified on; the others go to the dispatcher.
_CHANNEL_OF = {DELIVER_WEBHOOK: WEBHOOK_CHANNEL}

# pg_try_advisory_lock key of the active dispatcher: "payments" in ASCII, as a bigint.
DISPATCHER_LOCK_KEY = int.from_bytes(b"payments", "big")

_propagator = TraceContextTextMapPropagator()
_PAYLOAD = re.compile(r"^(\w+) (\S+) ([0-9]{1,19})$")


def notify_sql(work: str, id_sql: str) -> tuple[str, list[str]]:
    """The SQL expression (and its parameters) that enqueues ``work`` for the row id ``id_sql`` evaluates to.

    The one place that writes a payload: ``enqueue`` below passes a parameter, and the order create
    (``payments.db``) the id its own INSERT returns, so that both are one statement."""
    if work not in TASKS:
        raise ValueError(f"{work!r} is not work the outbox may send (payments.outbox.TASKS)")
    carrier: dict[str, str] = {}
    if trace.get_current_span().get_span_context().is_valid:
        _propagator.inject(carrier)
    prefix = f"{work} {carrier.get('traceparent', '-')} "
    return f"pg_notify(%s, %s || ({id_sql})::text)", [channel_of(work), prefix]


def channel_of(work: str) -> str:
    return _CHANNEL_OF.get(work, CHANNEL)


def enqueue(work: str, object_id: int) -> None:
    """Have the dispatcher send ``work(object_id)`` to Celery (a webhook delivery: the webhooks workers send it)
    once the current transaction commits.

    Inside a transaction PostgreSQL holds the notification until COMMIT and drops it on ROLLBACK (a rolled
    back savepoint drops the ones sent under it), so the task never runs for a row that does not exist.
    In autocommit the statement is its own transaction and the notification is delivered at once. The
    broker is not touched here: a broker outage cannot slow or fail the caller.
    """
    expression, params = notify_sql(work, "%s::bigint")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {expression}", [*params, int(object_id)])


def parse(payload: str) -> tuple[str, str, int] | None:
    """(work, traceparent, id) of a payload, or None if it is not one the dispatcher may act on."""
    match = _PAYLOAD.match(payload)
    if match is None or match.group(1) not in TASKS:
        return None
    return match.group(1), match.group(2), int(match.group(3))


def active_dispatchers() -> int:
    """How many sessions hold the active dispatcher's lock in this database: 1, or 0 when none publishes."""
    # pg_locks shows a bigint advisory key as two halves, high in classid and low in objid (objsubid 1).
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = %s AND objid = %s",
            [DISPATCHER_LOCK_KEY >> 32, DISPATCHER_LOCK_KEY & 0xFFFFFFFF],
        )
        return cursor.fetchone()[0]
