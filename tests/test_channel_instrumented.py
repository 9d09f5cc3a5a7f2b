"""The channel wrapper: every call timed by outcome kind, and guarded by its account's shared circuit breaker,
against the simulator and the real Redis (the breaker itself: test_channel_breaker.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from django.conf import settings
from prometheus_client import REGISTRY

from channels.base import CircuitOpen, Refused, Retryable, TradeStatus
from channels.breaker import Settings, SharedBreaker
from channels.http import Timeouts
from channels.instrumented import InstrumentedChannel
from channels.sandbox.adapter import SandboxChannel
from channels.sandbox.simulator import SandboxSimulator
from tests.test_sandbox_adapter import EXPIRES, MERCHANT, SECRET, fault

CHANNEL = "sandbox"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def sim() -> Iterator[SandboxSimulator]:
    with SandboxSimulator({MERCHANT: SECRET}, port=0) as simulator:
        yield simulator


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def channel(sim: SandboxSimulator, clock: Clock) -> Iterator[InstrumentedChannel]:
    httpx.post(f"{sim.base_url}/_sim/reset").raise_for_status()
    inner = SandboxChannel(api_base=sim.base_url, merchant_id=MERCHANT, secret=SECRET,
                           timeouts=Timeouts(connect_s=1, read_s=1, write_s=1))
    # An account of its own per test: the breaker's state is shared through Redis.
    breaker = SharedBreaker(CHANNEL, f"{MERCHANT}-{uuid.uuid4().hex[:8]}", redis.Redis.from_url(settings.REDIS_URL),
                            Settings(window_s=30, min_calls=3, failure_rate=0.5, open_s=30, probes=1), clock=clock)
    yield InstrumentedChannel(inner, breaker)
    breaker.reset()


def calls(operation: str, outcome: str) -> float:
    labels = {"channel": CHANNEL, "operation": operation, "outcome": outcome}
    return REGISTRY.get_sample_value("payments_channel_call_duration_seconds_count", labels) or 0.0


def breaker_state(channel: InstrumentedChannel) -> str:
    return channel.breaker.status()["state"]


def create(channel: InstrumentedChannel, out_trade_no: str = "ord_wrap1"):
    return channel.create_trade(out_trade_no=out_trade_no, amount=1050, currency="CNY", description="x",
                                notify_url="http://127.0.0.1:9/cb", expires_at=EXPIRES)


def test_calls_are_counted_by_operation_and_outcome_kind(channel: InstrumentedChannel, sim: SandboxSimulator) -> None:
    before = {kind: calls("create_trade", kind) for kind in ("definite", "retryable", "refused")}
    assert create(channel).status == TradeStatus.WAITING
    fault(sim, "create", "http_500")
    with pytest.raises(Retryable):
        create(channel, "ord_wrap2")
    fault(sim, "create", "refuse")
    with pytest.raises(Refused):
        create(channel, "ord_wrap3")
    assert calls("create_trade", "definite") == before["definite"] + 1
    assert calls("create_trade", "retryable") == before["retryable"] + 1
    assert calls("create_trade", "refused") == before["refused"] + 1
    # The rest of the adapter is still there.
    assert channel.name == CHANNEL and channel.api_base == sim.base_url


def test_breaker_opens_on_failures_and_recovers_after_the_open_period(
    channel: InstrumentedChannel, sim: SandboxSimulator, clock: Clock
) -> None:
    fault(sim, "create", "http_500", count=3)
    for i in range(3):
        with pytest.raises(Retryable):
            create(channel, f"ord_brk{i}")
    assert breaker_state(channel) == "open"

    # While open, nothing is sent: the simulator sees no create.
    with pytest.raises(CircuitOpen) as short:
        create(channel, "ord_brk_open")
    assert short.value.code == "channel_circuit_open" and short.value.retry_after_s == pytest.approx(30)
    assert isinstance(short.value, Retryable)
    assert httpx.get(f"{sim.base_url}/_sim/trades/ord_brk_open").status_code == 404

    # After the open period one probe goes through (probes=1); its success closes the breaker.
    clock.now += 30
    probe = channel.breaker.before_call()
    assert probe.probe and breaker_state(channel) == "half_open"
    assert not channel.breaker.before_call().allowed  # a second caller waits for the probe
    channel.breaker.after_call(probe, failed=False, elapsed_s=0.1)
    assert breaker_state(channel) == "closed"
    assert create(channel, "ord_brk_after").status == TradeStatus.WAITING


def test_a_failed_trial_opens_the_breaker_again(
    channel: InstrumentedChannel, sim: SandboxSimulator, clock: Clock
) -> None:
    fault(sim, "create", "http_500", count=4)
    for i in range(3):
        with pytest.raises(Retryable):
            create(channel, f"ord_trial{i}")
    clock.now += 30
    with pytest.raises(Retryable) as trial:
        create(channel, "ord_trial3")
    assert trial.value.code == "channel_system_error"  # the probe was sent, and failed
    assert breaker_state(channel) == "open"
    with pytest.raises(CircuitOpen) as short:
        create(channel, "ord_trial4")
    assert short.value.code == "channel_circuit_open"


def test_refusals_are_answers_and_do_not_open_the_breaker(channel: InstrumentedChannel, sim: SandboxSimulator) -> None:
    fault(sim, "create", "refuse", count=5)
    for i in range(5):
        with pytest.raises(Refused):
            create(channel, f"ord_refused{i}")
    assert breaker_state(channel) == "closed"
