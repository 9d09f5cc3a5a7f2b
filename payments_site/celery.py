"""The Celery application. Its settings live in the top-level ``celeryconfig`` module."""

from __future__ import annotations

import os

from celery import Celery, signals

from payments.observability import bind_trace_id, current_trace_id, new_trace_id

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "payments_site.settings")

app = Celery("payments")
app.config_from_object("celeryconfig")
app.autodiscover_tasks()


# Carry the trace id of whoever enqueued a task into the task, so that the web request, the charge and the
# channel call share one trace id in the logs and the transition log.
@signals.before_task_publish.connect
def _add_trace_header(headers: dict | None = None, **_: object) -> None:
    if headers is not None and not headers.get("trace_id"):
        headers["trace_id"] = current_trace_id() or new_trace_id()


@signals.task_prerun.connect
def _bind_task_trace(task: object = None, **_: object) -> None:
    request = getattr(task, "request", None)
    bind_trace_id(getattr(request, "trace_id", None) or new_trace_id())
