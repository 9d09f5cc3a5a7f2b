"""Log records for web, worker and beat: what each line carries, and which lines are kept.

``ContextFilter`` stamps every record with the service, the OpenTelemetry trace and span ids and the ids
bound in ``payments.observability`` (order, refund, merchant, channel, task). ``SamplingFilter`` drops a
share of routine lines, as section 2.4 of the seed design (``../shared/seed/``) asks: a fixed rate, a lower
one when the process is busy, and never a key path (every money-moving decision, marked
``extra={"key_path": True}``) nor a WARNING or worse. Both sit on the handler, so a dropped line is never formatted.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from opentelemetry import trace

from payments.observability import log_fields

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse


def _default_service() -> str:
    """web, unless this is a management command (``manage.py run_simulator`` logs as run_simulator)."""
    if os.path.basename(sys.argv[0]) == "manage.py" and len(sys.argv) > 1 and sys.argv[1] != "runserver":
        return sys.argv[1]
    return "web"


_service = os.environ.get("SERVICE", "") or _default_service()


def service_name() -> str:
    return _service


def set_service(name: str) -> None:
    """Name this process in its log lines and spans, unless the environment (the Procfile) named it."""
    global _service
    if not os.environ.get("SERVICE"):
        _service = name


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        record.service = service_name()
        record.trace_id = format(context.trace_id, "032x") if context.trace_id else ""
        record.span_id = format(context.span_id, "016x") if context.span_id else ""
        for name, value in log_fields().items():
            if not hasattr(record, name):  # an explicit ``extra`` wins over the bound value
                setattr(record, name, value)
        return True


def parse_tiers(spec: str) -> list[tuple[float, float]]:
    """``"60:0.5,80:0.1"`` → [(60.0, 0.5), (80.0, 0.1)]: at a load of at least 60 % keep half, at 80 % a tenth."""
    tiers = []
    for part in spec.replace(" ", "").split(","):
        if part:
            threshold, rate = part.split(":")
            tiers.append((float(threshold), float(rate)))
    return sorted(tiers)


def host_cpu_times() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine since boot, in clock ticks (``/proc/stat``); None where the
    system has no such file."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = [int(x) for x in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: idle and iowait are the time nothing ran.
    total = sum(fields)
    return total - fields[3] - fields[4], total


class LoadMeter:
    """How busy this process is, in percent: the largest of its own CPU use (of one core, which is all a Python
    process gets under the GIL), the whole machine's CPU use, and its log volume against ``busy_lines_per_s``.
    The machine's counts because a process rarely has the cores to itself: web, workers, PostgreSQL and Redis
    share them, and on a saturated machine each Python process may use only a fraction of one core while every
    line it writes takes CPU from the others. Measured over windows of ``window_s`` so that the per-line cost is
    a counter increment and a clock read."""

    def __init__(
        self, busy_lines_per_s: float = 1000.0, window_s: float = 1.0,
        cpu_clock: Callable[[], float] = time.process_time,
        host_clock: Callable[[], tuple[int, int] | None] = host_cpu_times,
    ) -> None:
        self.busy_lines_per_s = busy_lines_per_s
        self.window_s = window_s
        self.cpu_clock = cpu_clock
        self.host_clock = host_clock
        self.load = 0.0
        self._lines = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._cpu_started = cpu_clock()
        self._host_started = host_clock()

    def tick(self) -> float:
        """Count one line; return the load measured over the last full window."""
        self._lines += 1  # racy under threads, and that is fine for an estimate
        now = time.monotonic()
        if now - self._started >= self.window_s and self._lock.acquire(blocking=False):
            try:
                elapsed = now - self._started
                cpu = self.cpu_clock()
                host = self.host_clock()
                cpu_percent = 100.0 * (cpu - self._cpu_started) / elapsed
                volume_percent = 100.0 * self._lines / elapsed / self.busy_lines_per_s
                host_percent = 0.0
                if host is not None and self._host_started is not None and host[1] > self._host_started[1]:
                    host_percent = 100.0 * (host[0] - self._host_started[0]) / (host[1] - self._host_started[1])
                self.load = min(100.0, max(cpu_percent, host_percent, volume_percent))
                self._lines, self._started, self._cpu_started, self._host_started = 0, now, cpu, host
            finally:
                self._lock.release()
        return self.load


_MAX_56 = float(1 << 56)


class SamplingFilter(logging.Filter):
    """Keep every key-path and WARNING+ line; keep routine lines at ``rate`` × the load tier's rate.

    The decision is made per trace: a line is kept when the trace id's random low 56 bits (W3C trace ids
    are random there) fall under the rate. Every process of a trace decides alike, so a kept trace is kept
    whole, and a trace kept at a low rate is also kept at any higher one. Lines outside any trace are
    sampled at random.
    """

    def __init__(
        self, rate: float | str = 1.0, load_tiers: str = "", busy_lines_per_s: float | str = 1000.0,
        window_s: float | str = 1.0,
    ) -> None:
        super().__init__()
        self.rate = float(rate)
        self.tiers = parse_tiers(load_tiers)
        self.meter = LoadMeter(float(busy_lines_per_s), float(window_s))

    def current_rate(self) -> float:
        rate = self.rate
        if self.tiers:
            load = self.meter.tick()
            for threshold, tier_rate in reversed(self.tiers):
                if load >= threshold:
                    return rate * tier_rate
        return rate

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or getattr(record, "key_path", False):
            if self.tiers:
                self.meter.tick()
            return True
        rate = self.current_rate()
        if rate >= 1.0:
            return True
        trace_id = trace.get_current_span().get_span_context().trace_id
        if trace_id:
            return (trace_id & ((1 << 56) - 1)) / _MAX_56 < rate
        return random.random() < rate


class DropTaskSuccess(logging.Filter):
    """Drops Celery's "Task … succeeded in …s" line (``celery.app.trace``), and only it: retries and failures
    stay. A task's effects are recorded where they happen (a transition's key-path line, a webhook attempt's row,
    a channel call's duration in ``payments_channel_call_duration_seconds``): the line said nothing new, once per
    task, under load."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (record.levelno == logging.INFO and message.startswith("Task ") and " succeeded in " in message)


access_log = logging.getLogger("payments.access")


class AccessLogMiddleware:
    """The access log: one line per request, written by the app rather than by gunicorn (whose access log is
    off, ``gunicorn.conf.py``). Here it is inside the request's trace and log context, so a line carries the
    trace id and the merchant and order the request was about. A request answered 2xx or 3xx is a routine line,
    sampled under load like the others (gunicorn's was written for every request, whatever the load); a 4xx or
    5xx is a WARNING, never sampled. The path is logged without its query string, where a channel's redirect may
    carry a signature (gunicorn's line had it)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed_ms = (time.perf_counter() - started) * 1000
        status = response.status_code
        access_log.log(logging.INFO if status < 400 else logging.WARNING, "%s %s %s %.1f ms",
                       request.method, request.path, status, elapsed_ms,
                       extra={"http_method": request.method, "http_path": request.path, "http_status": status,
                              "duration_ms": round(elapsed_ms, 1), "remote_addr": request.META.get("REMOTE_ADDR", "")})
        return response
