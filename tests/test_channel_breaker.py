"""The shared circuit breaker (channels/breaker.py), on the real Redis: opening on the failure rate and on the
p95 latency, half-open probes, forced modes, state shared by processes, and Redis unreachable."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry

from channels.breaker import Admission, BreakerCollector, Settings, SharedBreaker

SETTINGS = Settings(window_s=10, min_calls=4, failure_rate=0.5, slow_call_s=1.0, open_s=30, probes=2,
                    probe_lease_s=60)
FAST = 0.1  # seconds: a call under slow_call_s
SLOW = 1.5


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


@pytest.fixture
def account() -> str:
    return f"acct-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def breaker(client: redis.Redis, account: str, clock: Clock) -> Iterator[SharedBreaker]:
    breaker = SharedBreaker("testchan", account, client, SETTINGS, clock=clock)
    yield breaker
    breaker.reset()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def another_process(breaker: SharedBreaker, clock: Clock) -> SharedBreaker:
    """The same account's breaker as another process builds it: its own client and memory."""
    return SharedBreaker(breaker.channel, breaker.account, redis.Redis.from_url(settings.REDIS_URL), SETTINGS,
                         clock=clock)


def call(breaker: SharedBreaker, *, failed: bool = False, elapsed_s: float = FAST) -> Admission:
    admission = breaker.before_call()
    if admission.allowed:
        breaker.after_call(admission, failed=failed, elapsed_s=elapsed_s)
    return admission


def transitions(breaker: SharedBreaker, to: str) -> float:
    labels = {"channel": breaker.channel, "account": breaker.account, "to": to}
    return REGISTRY.get_sample_value("payments_channel_breaker_transitions_total", labels) or 0.0


def test_opens_on_the_failure_rate_of_the_window(breaker: SharedBreaker, clock: Clock) -> None:
    call(breaker)
    call(breaker)
    call(breaker, failed=True)
    assert breaker.status()["state"] == "closed"  # 3 calls: fewer than min_calls
    call(breaker, failed=True)  # 2 of 4 failed: 50 %
    status = breaker.status()
    assert status["state"] == "open" and status["reason"] == "failure_rate"
    assert transitions(breaker, "open") == 1

    refused = breaker.before_call()
    assert not refused.allowed and refused.retry_after_s == pytest.approx(30)
    clock.now += 10
    assert breaker.before_call().retry_after_s == pytest.approx(20)


def test_failures_older_than_the_window_do_not_count(breaker: SharedBreaker, clock: Clock) -> None:
    for _ in range(3):
        call(breaker, failed=True)
    clock.now += SETTINGS.window_s + 1
    for _ in range(3):
        call(breaker)
    call(breaker, failed=True)  # 1 of the 4 calls in the window
    assert breaker.status()["state"] == "closed"


def test_refusals_are_answers_not_failures(breaker: SharedBreaker) -> None:
    for _ in range(10):
        call(breaker, failed=False)  # what the instrumented channel records for a Refused
    assert breaker.status()["state"] == "closed"


def test_opens_when_the_p95_latency_is_above_the_threshold(breaker: SharedBreaker, clock: Clock) -> None:
    for _ in range(19):
        call(breaker)
    call(breaker, elapsed_s=SLOW)  # 1 of 20 slow: the p95 is still fast
    assert breaker.status()["state"] == "closed"
    clock.now += 1
    call(breaker, elapsed_s=SLOW)  # 2 of 21: more than 5 % slow, p95 above the threshold
    status = breaker.status()
    assert status["state"] == "open" and status["reason"] == "slow_calls"


def open_it(breaker: SharedBreaker) -> None:
    for _ in range(SETTINGS.min_calls):
        call(breaker, failed=True)
    assert breaker.status()["state"] == "open"


def test_half_open_lets_only_the_probes_through_and_a_success_closes(
    breaker: SharedBreaker, clock: Clock
) -> None:
    open_it(breaker)
    clock.now += SETTINGS.open_s
    processes = [another_process(breaker, clock) for _ in range(8)]
    admissions: list[Admission] = []
    start = threading.Barrier(len(processes))

    def ask(process: SharedBreaker) -> None:
        start.wait()
        admissions.append(process.before_call())

    threads = [threading.Thread(target=ask, args=(process,)) for process in processes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    probes = [a for a in admissions if a.allowed]
    assert len(probes) == SETTINGS.probes and all(a.probe for a in probes)
    assert all(1 <= a.retry_after_s <= 5 for a in admissions if not a.allowed)
    assert breaker.status()["state"] == "half_open" and transitions(breaker, "half_open") == 1

    breaker.after_call(probes[0], failed=False, elapsed_s=FAST)
    assert breaker.status()["state"] == "closed" and transitions(breaker, "closed") == 1
    assert breaker.before_call().allowed
    # The window starts empty: the failures that opened it are forgotten.
    call(breaker, failed=True)
    assert breaker.status()["state"] == "closed"


def test_a_failed_probe_opens_it_again(breaker: SharedBreaker, clock: Clock) -> None:
    open_it(breaker)
    clock.now += SETTINGS.open_s
    probe = breaker.before_call()
    assert probe.probe
    breaker.after_call(probe, failed=True, elapsed_s=FAST)
    status = breaker.status()
    assert status["state"] == "open" and status["reason"] == "probe_failed"
    assert not breaker.before_call().allowed


def test_lost_probes_free_their_places_after_the_lease(breaker: SharedBreaker, clock: Clock) -> None:
    open_it(breaker)
    clock.now += SETTINGS.open_s
    assert breaker.before_call().probe and breaker.before_call().probe  # both processes die mid-call
    assert not breaker.before_call().allowed
    clock.now += SETTINGS.probe_lease_s
    assert breaker.before_call().probe


def test_forced_modes_override_the_automatic_state(breaker: SharedBreaker, clock: Clock) -> None:
    assert call(breaker).allowed
    breaker.set_mode("force_open")
    refused = breaker.before_call()
    assert not refused.allowed and refused.retry_after_s == SETTINGS.open_s
    assert breaker.status()["effective"] == "open"

    breaker.set_mode("force_closed")
    for _ in range(10):
        assert call(breaker, failed=True).allowed  # ops said so: failures do not open it
    assert breaker.status()["effective"] == "closed"

    open_it_under = another_process(breaker, clock)
    breaker.set_mode("auto")  # back to the rules: closed, with an empty window
    assert breaker.status() | {"since": None} == {
        "mode": "auto", "state": "closed", "effective": "closed", "reason": "", "since": None, "open_until": None}
    open_it(open_it_under)


def test_two_processes_share_one_breaker(breaker: SharedBreaker, clock: Clock) -> None:
    other = another_process(breaker, clock)
    assert call(other).allowed
    open_it(breaker)
    # ``other`` trusts the "closed" it heard for up to a second (the price of one round trip per call)…
    assert other.before_call().allowed
    clock.now += 1
    # …then asks, and finds the breaker this process opened.
    assert not other.before_call().allowed
    other.set_mode("force_closed")
    assert breaker.before_call().allowed


def test_with_redis_unreachable_calls_go_through_and_a_local_breaker_counts_them(
    account: str, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    dead = redis.Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    breaker = SharedBreaker("testchan", account, dead, SETTINGS, clock=clock)
    caplog.set_level(logging.WARNING, logger="channels.breaker")
    for _ in range(SETTINGS.min_calls - 1):
        assert call(breaker, failed=True).allowed
        clock.now += 6  # past the pause after each error: every call tries Redis again
    assert call(breaker, failed=True).allowed
    # min_calls failures in a row: this process stops sending, for open_s.
    refused = breaker.before_call()
    assert not refused.allowed and not refused.shared
    clock.now += SETTINGS.open_s
    assert call(breaker).allowed  # the trial, which closes it
    assert breaker.before_call().allowed
    # One line for the whole outage, not one per call.
    assert len([r for r in caplog.records if "Redis unreachable" in r.getMessage()]) == 1


def test_the_scrape_reads_every_breaker_state(breaker: SharedBreaker, clock: Clock) -> None:
    other = SharedBreaker("testchan", breaker.account + "-b", breaker.client, SETTINGS, clock=clock)
    registry = CollectorRegistry()
    registry.register(BreakerCollector(lambda: [breaker, other]))
    open_it(breaker)
    other.set_mode("force_open")
    try:
        def sample(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, {"channel": "testchan", **labels})

        assert sample("payments_channel_breaker_state", account=breaker.account) == 2
        assert sample("payments_channel_breaker_mode", account=breaker.account, mode="auto") == 1
        assert sample("payments_channel_breaker_state", account=other.account) == 2
        assert sample("payments_channel_breaker_mode", account=other.account, mode="force_open") == 1
        other.set_mode("auto")
        assert sample("payments_channel_breaker_state", account=other.account) == 0
    finally:
        other.reset()
