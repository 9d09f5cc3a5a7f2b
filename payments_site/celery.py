"""The Celery application. Its settings live in the top-level ``celeryconfig`` module."""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "payments_site.settings")

app = Celery("payments")
app.config_from_object("celeryconfig")
app.autodiscover_tasks()


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
