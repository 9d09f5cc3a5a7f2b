"""``GET /metrics``: the Prometheus text of every process of this host.

Processes write their samples to ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode:
gunicorn's workers, Celery's pool processes, beat); a scrape adds them up and reads the state gauges.
Where workers run on hosts without a web process, ``WORKER_METRICS_PORT`` makes each worker serve the same
text itself.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

log = logging.getLogger(__name__)


def registry(*, with_state: bool) -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    if with_state:
        from channels.breaker import BreakerCollector
        from channels.registry import breakers
        from payments.metrics import StateCollector

        registry.register(StateCollector())
        registry.register(BreakerCollector(breakers))
    return registry


@csrf_exempt  # so that any other method is a 405, not the CSRF check's 403
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(registry(with_state=True)), content_type=CONTENT_TYPE_LATEST)


def start_worker_exporter() -> None:
    if settings.WORKER_METRICS_PORT:
        from prometheus_client import start_http_server

        start_http_server(
            settings.WORKER_METRICS_PORT, addr=settings.WORKER_METRICS_ADDR, registry=registry(with_state=False)
        )
        log.info("worker metrics on port %s", settings.WORKER_METRICS_PORT)


def process_exited(pid: int) -> None:
    """Drop the live gauges of a pool process that is gone (its counters stay in the sums)."""
    multiprocess.mark_process_dead(pid)
