"""Celery settings (``payments_site/celery.py`` loads this module).

Tasks are acknowledged late and re-delivered when a worker dies, so every task must be safe to run twice.
Each kind of work has its own queue so that a slow channel or a nightly run never starves callbacks.
What a deployment sets comes from the Django settings (``payments_site/settings.py``), read from the environment
in that one place.
"""

from django.conf import settings
from kombu import Exchange, Queue

broker_url = settings.CELERY_BROKER_URL
# Results are not used: state that matters lives in PostgreSQL.
task_ignore_result = True
result_backend = None

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_soft_time_limit = 60
task_time_limit = 90
worker_hijack_root_logger = False
# Celery's Django fixup closes every database connection before and after each task unless this is set: on a
# threads pool that is a new PostgreSQL connection, a backend forked and authenticated, per task. Django's own
# rules decide instead (CONN_MAX_AGE, health checks, a connection left broken): payments_site/celery.py calls
# close_old_connections() around each task, as Django does around each request.
CELERY_DB_REUSE_MAX = 2**62
broker_connection_retry_on_startup = True

# The broker is a URL: Redis by default, RabbitMQ where a task must survive the broker (README "Choosing a
# broker"). The two differ only in what follows.
RABBITMQ = broker_url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")
if RABBITMQ:
    # Quorum queues are replicated and always durable: a broker node that restarts or fails loses no task.
    # They have no global QoS; Celery sees their x-queue-type and uses per-consumer prefetch instead
    # (worker_detect_quorum_queues).
    _queue_arguments: dict[str, str] | None = {"x-queue-type": "quorum"}
    task_create_missing_queue_type = "quorum"
    worker_detect_quorum_queues = True
    # A retry's countdown goes through RabbitMQ's native delayed delivery (set up by Celery for quorum
    # queues), which routes by topic: on a direct exchange a delayed task would sit in the worker's memory,
    # holding one of its prefetch slots until it is due.
    _exchange_type = "topic"
    # Publisher confirms: a publish returns once the broker has stored the message, so the dispatcher and
    # the sweeps never count as sent a task that the broker dropped.
    broker_transport_options: dict[str, object] = {"confirm_publish": True}
else:
    _queue_arguments = None
    _exchange_type = "direct"
    # Redis re-delivers an unacknowledged task after this long; it must exceed the longest countdown or ETA
    # we schedule (retry_backoff_max), or a delayed retry would run twice.
    broker_transport_options = {"visibility_timeout": 2 * 3600}
    # Kombu's Redis transport, with one fix: a worker survives Redis going away (payments_site/broker.py).
    broker_transport = "payments_site.broker:RedisTransport"

QUEUES = ("charges", "callbacks", "refunds", "webhooks", "reconciliation")
# Each queue its own exchange and key: a bare Queue(name) would be bound to the default exchange and
# key, and every queue would receive every message.
task_queues = [
    Queue(name, Exchange(name, type=_exchange_type), routing_key=name, queue_arguments=_queue_arguments)
    for name in QUEUES
]
task_default_queue = "charges"
task_routes = {
    "payments.tasks.charge_order": {"queue": "charges"},
    "payments.tasks.query_order": {"queue": "charges"},
    "payments.tasks.expire_order": {"queue": "charges"},
    "payments.tasks.process_notification": {"queue": "callbacks"},
    "payments.tasks.refund_order": {"queue": "refunds"},
    "payments.tasks.deliver_webhook": {"queue": "webhooks"},
    "payments.tasks.sweep_*": {"queue": "charges"},
    "reconciliation.tasks.*": {"queue": "reconciliation"},
}

_sweep_every = settings.SWEEP_INTERVAL_S
beat_schedule = {
    "sweep-created-orders": {"task": "payments.tasks.sweep_created_orders", "schedule": _sweep_every},
    "sweep-pending-orders": {"task": "payments.tasks.sweep_pending_orders", "schedule": _sweep_every},
    "sweep-expired-orders": {"task": "payments.tasks.sweep_expired_orders", "schedule": _sweep_every},
    "sweep-refunds": {"task": "payments.tasks.sweep_refunds", "schedule": _sweep_every},
    "sweep-notifications": {"task": "payments.tasks.sweep_notifications", "schedule": _sweep_every},
    # Webhook retries are scheduled in the database; this sends what is due, so it runs often.
    "sweep-webhooks": {"task": "payments.tasks.sweep_webhooks", "schedule": settings.WEBHOOK_SWEEP_INTERVAL_S},
    # Answers are kept at least IDEMPOTENCY_TTL_S (24 h); an hourly purge keeps the table small.
    "purge-idempotency-records": {"task": "payments.tasks.purge_idempotency_records", "schedule": 3600},
}
# Nightly reconciliation: each channel's previous business day, at RECONCILIATION_TIME of its bill zone.
from django.conf import settings as _settings  # noqa: E402

from reconciliation.schedule import daily_entries  # noqa: E402

beat_schedule.update(daily_entries(_settings.RECONCILIATION_TIME, {
    "alipay": "Asia/Shanghai", "wechatpay": "Asia/Shanghai", "sandbox": _settings.SANDBOX_BILL_TIMEZONE,
}))

# Publishing happens in the outbox dispatcher (payments/outbox.py) and the sweeps, never in a request: if
# the broker is down, give up quickly (the sweeps re-enqueue from the database) so that the dispatcher keeps
# draining PostgreSQL's notification queue.
task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
broker_connection_timeout = 2
