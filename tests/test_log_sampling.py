"""Log sampling: a fixed rate, a lower one under load, never a key path or a WARNING, whole traces."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from opentelemetry import trace

from payments_site.logs import LoadMeter, SamplingFilter, host_cpu_times, parse_tiers

RNG = random.Random(20261127)


@contextmanager
def in_trace(trace_id: int | None = None) -> Iterator[int]:
    """Run as if inside a span of a trace (a random one unless given), as a request or task does."""
    trace_id = trace_id or RNG.getrandbits(128)
    context = trace.SpanContext(trace_id=trace_id, span_id=RNG.getrandbits(64), is_remote=False)
    with trace.use_span(trace.NonRecordingSpan(context)):
        yield trace_id


def record(level: int = logging.INFO, key_path: bool = False) -> logging.LogRecord:
    rec = logging.LogRecord("payments.services", level, __file__, 1, "a line", None, None)
    if key_path:
        rec.key_path = True
    return rec


def kept_share(sampler: SamplingFilter, lines: int = 4000, **kwargs: bool | int) -> float:
    kept = 0
    for _ in range(lines):
        with in_trace():
            kept += sampler.filter(record(**kwargs))  # type: ignore[arg-type]
    return kept / lines


def test_routine_lines_are_kept_at_the_fixed_rate() -> None:
    assert 0.08 <= kept_share(SamplingFilter(rate=0.1)) <= 0.12


def test_key_paths_and_warnings_are_never_dropped() -> None:
    sampler = SamplingFilter(rate=0.1)
    assert kept_share(sampler, key_path=True) == 1.0
    assert kept_share(sampler, level=logging.WARNING) == 1.0
    assert kept_share(sampler, level=logging.ERROR) == 1.0
    assert kept_share(SamplingFilter(rate=0.0), key_path=True) == 1.0


def test_a_kept_trace_is_kept_whole_and_every_process_decides_alike() -> None:
    web, worker = SamplingFilter(rate=0.1), SamplingFilter(rate=0.1)  # two processes, same settings
    kept_traces = 0
    for _ in range(500):
        with in_trace():
            decisions = {web.filter(record()) for _ in range(5)} | {worker.filter(record()) for _ in range(5)}
            assert len(decisions) == 1  # all of the trace's lines, or none of them
            kept_traces += decisions == {True}
            assert web.filter(record(key_path=True))  # a dropped trace still shows its decisions
    assert 25 <= kept_traces <= 80


def test_a_trace_kept_at_a_low_rate_is_kept_at_every_higher_rate() -> None:
    low, high = SamplingFilter(rate=0.05), SamplingFilter(rate=0.5)
    for _ in range(1000):
        with in_trace():
            if low.filter(record()):
                assert high.filter(record())


def idle_cpu() -> float:
    return 0.0


def no_host() -> None:
    """A system without /proc/stat: the meter goes by the process alone (the test machine may be busy)."""
    return None


def warm_up(sampler: SamplingFilter) -> None:
    """Log for a few measuring windows, so that the meter has a load to report."""
    deadline = time.monotonic() + 5 * sampler.meter.window_s
    while time.monotonic() < deadline:
        sampler.filter(record())


def test_under_load_the_rate_drops_by_the_load_tier() -> None:
    # Load from log volume: 100 lines/s count as a fully busy process, and the test writes far more than
    # that. The tiers are the seed design's (its section 2.4): from 60 % load keep half, from 80 % a tenth.
    busy = SamplingFilter(rate=1.0, load_tiers="60:0.5,80:0.1")
    busy.meter = LoadMeter(busy_lines_per_s=100, window_s=0.01, cpu_clock=idle_cpu, host_clock=no_host)
    calm = SamplingFilter(rate=1.0, load_tiers="60:0.5,80:0.1")
    calm.meter = LoadMeter(busy_lines_per_s=10**9, window_s=0.01, cpu_clock=idle_cpu, host_clock=no_host)
    warm_up(calm)
    assert calm.meter.load < 60
    assert kept_share(calm) == 1.0
    warm_up(busy)  # right before measuring: a pause would rightly read as a calm window
    assert busy.meter.load >= 80
    assert 0.07 <= kept_share(busy) <= 0.13
    # A base rate and the load tier multiply; key paths stay whole under any load.
    busy.rate = 0.5
    assert 0.03 <= kept_share(busy) <= 0.07
    assert kept_share(busy, key_path=True) == 1.0


def test_a_busy_cpu_counts_as_load() -> None:
    # A process clock that runs as fast as the wall clock: one core fully used.
    sampler = SamplingFilter(rate=1.0, load_tiers="60:0.5,80:0.1")
    sampler.meter = LoadMeter(busy_lines_per_s=10**9, window_s=0.01, cpu_clock=time.monotonic, host_clock=no_host)
    warm_up(sampler)
    assert sampler.meter.load >= 80
    assert 0.07 <= kept_share(sampler) <= 0.13


class Host:
    """A machine's CPU counters that advance by ``busy`` of every 100 ticks each time they are read."""

    def __init__(self, busy: int) -> None:
        self.busy, self.reads = busy, 0

    def __call__(self) -> tuple[int, int]:
        self.reads += 1
        return self.busy * self.reads, 100 * self.reads


def test_a_busy_machine_counts_as_load_though_the_process_is_idle() -> None:
    # Web, workers and PostgreSQL sharing two saturated cores: each Python process uses a fraction of one, but
    # every line it writes is CPU the others need. The seed design's tiers are the machine's CPU use.
    busy = SamplingFilter(rate=1.0, load_tiers="60:0.5,80:0.1")
    busy.meter = LoadMeter(busy_lines_per_s=10**9, window_s=0.01, cpu_clock=idle_cpu, host_clock=Host(busy=95))
    warm_up(busy)
    assert busy.meter.load >= 80
    assert 0.07 <= kept_share(busy) <= 0.13
    calm = SamplingFilter(rate=1.0, load_tiers="60:0.5,80:0.1")
    calm.meter = LoadMeter(busy_lines_per_s=10**9, window_s=0.01, cpu_clock=idle_cpu, host_clock=Host(busy=30))
    warm_up(calm)
    assert calm.meter.load < 60
    assert kept_share(calm) == 1.0


def test_host_cpu_times_reads_this_machine() -> None:
    first = host_cpu_times()
    assert first is not None  # Linux: the tests' machines have /proc/stat
    busy, total = first
    assert 0 <= busy <= total


def test_middle_tier_and_tier_parsing() -> None:
    assert parse_tiers(" 80:0.1, 60:0.5 ") == [(60.0, 0.5), (80.0, 0.1)]
    assert parse_tiers("") == []
    sampler = SamplingFilter(rate=1.0, load_tiers="60:0.5,80:0.1")
    sampler.meter.window_s = 3600  # hold the load where the test puts it
    sampler.meter.load = 70
    assert sampler.current_rate() == 0.5
    sampler.meter.load = 50
    assert sampler.current_rate() == 1.0


def test_the_stdout_handler_samples_before_it_adds_context() -> None:
    handler = logging.getLogger().handlers[0]
    kinds = [type(f).__name__ for f in handler.filters]
    assert kinds == ["SamplingFilter", "ContextFilter"]
    sampling = handler.filters[0]
    assert isinstance(sampling, SamplingFilter) and sampling.rate == settings.LOG_SAMPLE_RATE


def test_celery_task_success_lines_are_dropped_and_retries_kept() -> None:
    from payments_site.logs import DropTaskSuccess

    def record(level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord("celery.app.trace", level, __file__, 1, msg, None, None)

    drop = DropTaskSuccess()
    assert not drop.filter(record(logging.INFO, "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s"))
    assert drop.filter(record(logging.INFO, "Task %(name)s[%(id)s] retry: %(exc)s"))
    assert drop.filter(record(logging.ERROR, "Task %(name)s[%(id)s] raised unexpected: %(exc)s"))
