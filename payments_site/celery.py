"""The Celery application. Its settings live in the top-level ``celeryconfig`` module."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from celery import Celery, bootsteps, signals

if TYPE_CHECKING:
    from payments.webhook_sender import WebhookSender

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "payments_site.settings")

app = Celery("payments")
app.config_from_object("celeryconfig")
app.autodiscover_tasks()


class WebhookSenderStep(bootsteps.StartStopStep):
    """A worker that consumes the ``webhooks`` queue also listens for new deliveries and sends them on its pool
    (``payments.webhook_sender``): the first attempt of a webhook skips the dispatcher and the broker."""

    requires = ("celery.worker.components:Pool",)  # started once the pool is, stopped before it

    def __init__(self, worker: Any, **_: Any) -> None:
        self.sender: WebhookSender | None = None
        self.thread: threading.Thread | None = None
        self.own_pool: ThreadPoolExecutor | None = None

    def include_if(self, worker: Any) -> bool:
        return "webhooks" in worker.app.amqp.queues.consume_from

    def start(self, worker: Any) -> None:
        from payments.webhook_sender import WebhookSender

        # Celery's threads pool is a ThreadPoolExecutor (its ``executor``): sends share its threads with the
        # tasks, and so its budget of database connections. Other pools (prefork, solo) get threads of their own.
        pool = getattr(worker.pool, "executor", None)
        if not isinstance(pool, ThreadPoolExecutor):
            pool = self.own_pool = ThreadPoolExecutor(max_workers=worker.concurrency,
                                                      thread_name_prefix="webhook-sender")
        self.sender = WebhookSender(pool=pool, waiting=2 * worker.concurrency)
        self.thread = threading.Thread(target=self.sender.run, name="webhook-sender", daemon=True)
        self.thread.start()

    def stop(self, worker: Any) -> None:
        if self.sender is not None:
            self.sender.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        if self.own_pool is not None:
            self.own_pool.shutdown(wait=True)

    terminate = stop


app.steps["worker"].add(WebhookSenderStep)


def started_as(command: str) -> bool:
    """Whether this process is ``celery … <command>``. Read from the command line because Celery loads
    Django (and so our app's ``ready``) before it sends any worker signal."""
    program = os.path.basename(sys.argv[0])
    if program == "__main__.py":  # python -m celery
        program = os.path.basename(os.path.dirname(sys.argv[0]))
    return program == "celery" and command in sys.argv[1:]


# Logging is Django's (settings.LOGGING, JSON lines): Celery must not install its own handlers or formats.
@signals.setup_logging.connect
def _keep_django_logging(**_: Any) -> None:
    pass


@signals.celeryd_init.connect
def _worker_starting(**_: Any) -> None:
    from payments_site.logs import set_service

    set_service("worker")


# Tracing in a worker waits for the pool processes, as OpenTelemetry asks for forking servers: the
# exporter's thread and connections then belong to the process that uses them.
@signals.worker_process_init.connect
def _worker_process_tracing(**_: Any) -> None:
    from payments_site import telemetry

    telemetry.setup_tracing()


@signals.worker_init.connect
def _worker_tracing_without_fork(sender: Any = None, **_: Any) -> None:
    """Thread and gevent pools never fork (no ``worker_process_init``): set up in the worker itself."""
    pool = getattr(sender, "pool_cls", None) or ""
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if not any(kind in name for kind in ("prefork", "processes", "solo")):
        from payments_site import telemetry

        telemetry.setup_tracing()
    from payments_site import metrics

    metrics.start_worker_exporter()


@signals.worker_ready.connect
@signals.worker_process_init.connect
@signals.beat_init.connect
def _started(**_: Any) -> None:
    """The worker consumes (its tasks imported, its pool up), a prefork pool's child runs, or beat ticks."""
    from payments_site.gc_tuning import tune_after_startup

    tune_after_startup()


@signals.worker_process_shutdown.connect
def _worker_process_gone(**_: Any) -> None:
    from payments_site import metrics

    metrics.process_exited(os.getpid())


@signals.beat_init.connect
def _beat_starting(**_: Any) -> None:
    from payments_site.logs import set_service

    set_service("beat")


# Each task starts with an empty log context, naming the task; services bind the ids they load.
@signals.task_prerun.connect
def _task_log_context(task: Any = None, **_: Any) -> None:
    from django.db import close_old_connections

    from payments import observability

    observability.clear()
    observability.bind(task=getattr(task, "name", None))
    # A task is a request: its thread's connection is kept up to CONN_MAX_AGE (celeryconfig.CELERY_DB_REUSE_MAX
    # keeps Celery from closing it after every task), and dropped if it broke or is too old. Not for a task run
    # eagerly, inside its caller's transaction.
    if not _eager(task):
        close_old_connections()


@signals.task_postrun.connect
def _task_log_context_done(task: Any = None, **_: Any) -> None:
    from django.db import close_old_connections

    from payments import observability

    observability.clear()
    if not _eager(task):
        close_old_connections()


def _eager(task: Any) -> bool:
    return bool(getattr(getattr(task, "request", None), "is_eager", False))


@signals.task_retry.connect
def _count_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
    from payments import metrics

    metrics.TASK_RETRIES.labels(task=_short(sender), reason=_reason(reason)).inc()


@signals.task_failure.connect
def _count_exhaustion(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    # A task fails for good only when its retries ran out or on an error it does not retry.
    from payments import metrics

    metrics.TASK_EXHAUSTED.labels(task=_short(sender), reason=_reason(exception)).inc()


def _short(task: Any) -> str:
    return str(getattr(task, "name", "unknown")).rsplit(".", 1)[-1]


def _reason(exc: Any) -> str:
    exc = getattr(exc, "exc", None) or exc  # a Retry wraps the exception that caused it
    return str(getattr(exc, "code", None) or type(exc).__name__)
