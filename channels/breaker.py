"""Circuit breakers, one per channel account, shared by every process through Redis.

The degradation of the seed design (its section 4.2, ``../shared/seed/``): when a channel account is sick,
stop sending it work for a while instead of piling timeouts on it, then try it again with a few probes.

A breaker opens, over a sliding window of the last ``window_s`` seconds (once it holds ``min_calls`` calls), on
- the failure rate: the share of calls that ended retryable or unknown (a ``Refused`` is an answer, not a
  failure) reaches ``failure_rate``;
- latency: the p95 of the calls' wall time is above ``slow_call_s``, that is, more than 5 % of them took
  longer than that. Counting calls over the threshold gives the p95 test exactly, without keeping latencies.
It stays open ``open_s`` seconds, then half-opens: at most ``probes`` calls go through at once (admitted
atomically in Redis); the first that succeeds closes the breaker, one that fails opens it again. Every
automatic change of state is logged and counted (``payments_channel_breaker_transitions_total``) by the one
process that made it. Ops can force a breaker open or closed, or give it back to the automatic rules (``auto``,
which starts closed with an empty window).

Redis data, per account (``<prefix>`` is ``breaker:<channel>:<account>``):
- ``<prefix>`` (hash, no expiry): ``mode`` (auto | force_open | force_closed), ``state`` (closed | open |
  half_open), ``open_until`` (epoch seconds), ``probes`` (probes in flight), ``probe_until`` (when probes in
  flight count as lost: a process that died during a probe must not keep the breaker half-open forever),
  ``since`` (when the state began), ``reason`` (why it last opened).
- ``<prefix>:window`` (hash, expires after two windows without calls): a ring of ``window_s`` one-second
  buckets, ``t<i>`` (the second bucket ``i`` counts), ``n<i>`` calls, ``f<i>`` failures, ``s<i>`` slow calls.

Cost per channel call: one round trip (the ``record`` script, which answers the state) while the process saw
the breaker closed less than ``TRUST_S`` ago; otherwise one more before the call (the ``admit`` script).

If Redis cannot be reached, the breaker never blocks a payment: calls go through and are counted by a
per-process breaker (``LocalBreaker``: ``min_calls`` failures in a row open it for ``open_s``), so that a
dead channel is still not hammered; when Redis answers again, the shared breaker decides again. Redis is
left alone for ``REDIS_RETRY_S`` after an error, so that an outage costs no call a connect timeout; it is
logged once when it starts and once when it ends.
Clocks: the processes' own wall clocks (kept in step by NTP), to the second.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

CLOSED, HALF_OPEN, OPEN = 0, 1, 2
STATE_VALUES = {"closed": CLOSED, "half_open": HALF_OPEN, "open": OPEN}
MODES = ("auto", "force_open", "force_closed")
# A process trusts a "closed" it heard from Redis for this long and admits calls without asking.
TRUST_S = 1.0
# After a Redis error, the local breaker alone decides for this long.
REDIS_RETRY_S = 5.0
# More than this share of calls slower than ``slow_call_s`` means a p95 above it.
SLOW_SHARE = 0.05

TRANSITIONS = Counter(
    "payments_channel_breaker_transitions",
    "Automatic changes of a shared circuit breaker's state, by the process that made them.",
    ["channel", "account", "to"],
)
LOCAL_STATE = Gauge(
    "payments_channel_breaker_local_state",
    "State of a process's local fallback breaker (used while Redis is unreachable): 0 closed, 1 half-open, "
    "2 open; the largest across the processes of a host.",
    ["channel", "account"], multiprocess_mode="livemax",
)
REDIS_ERRORS = Counter(
    "payments_channel_breaker_redis_errors",
    "Channel calls whose breaker bookkeeping could not reach Redis (they went through, counted locally).",
    ["channel"],
)

# Admit a call. KEYS: state hash. ARGV: now, open_s, probes, probe_lease_s.
# Returns {decision (0 refused, 1 admitted, 2 admitted as a probe), state, mode, retry_after, transition}.
_ADMIT = """
local now, open_s, max_probes, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local h = redis.call('HMGET', KEYS[1], 'mode', 'state', 'open_until', 'probes', 'probe_until')
local mode, state = h[1] or 'auto', h[2] or 'closed'
if mode == 'force_open' then return {0, 'open', mode, tostring(open_s), ''} end
if mode == 'force_closed' or state == 'closed' then return {1, 'closed', mode, '0', ''} end
local transition = ''
local probes, probe_until = tonumber(h[4]) or 0, tonumber(h[5]) or 0
if state == 'open' then
  local open_until = tonumber(h[3]) or 0
  if now < open_until then return {0, 'open', mode, tostring(open_until - now), ''} end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'since', ARGV[1])
  probes, transition = 0, 'half_open'
end
if probes >= max_probes and now >= probe_until then probes = 0 end
if probes < max_probes then
  redis.call('HSET', KEYS[1], 'probes', probes + 1, 'probe_until', tostring(now + lease))
  return {2, 'half_open', mode, '0', transition}
end
return {0, 'half_open', mode, tostring(math.max(math.min(probe_until - now, 5), 1)), transition}
"""

# Record a call's outcome. KEYS: state hash, window hash. ARGV: now, failed, slow, probe (0/1), window_s,
# min_calls, failure_rate, slow_share, open_s.
# Returns {state, mode, transition, reason}.
_RECORD = """
local now, failed, slow, probe = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3] == '1', ARGV[4] == '1'
local window, min_calls = tonumber(ARGV[5]), tonumber(ARGV[6])
local sec = math.floor(now)
local i = sec % window
if tonumber(redis.call('HGET', KEYS[2], 't' .. i)) ~= sec then
  redis.call('HSET', KEYS[2], 't' .. i, sec, 'n' .. i, 0, 'f' .. i, 0, 's' .. i, 0)
end
redis.call('HINCRBY', KEYS[2], 'n' .. i, 1)
if failed then redis.call('HINCRBY', KEYS[2], 'f' .. i, 1) end
if slow then redis.call('HINCRBY', KEYS[2], 's' .. i, 1) end
redis.call('EXPIRE', KEYS[2], window * 2)

local h = redis.call('HMGET', KEYS[1], 'mode', 'state', 'probes')
local mode, state = h[1] or 'auto', h[2] or 'closed'
local function open(reason)
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', tostring(now + tonumber(ARGV[9])), 'probes', 0,
             'since', ARGV[1], 'reason', reason)
  redis.call('DEL', KEYS[2])
  return {'open', mode, 'open', reason}
end
if probe and state == 'half_open' then
  redis.call('HSET', KEYS[1], 'probes', math.max((tonumber(h[3]) or 1) - 1, 0))
  if mode ~= 'auto' then return {state, mode, '', ''} end
  if failed then return open('probe_failed') end
  redis.call('HSET', KEYS[1], 'state', 'closed', 'probes', 0, 'since', ARGV[1])
  redis.call('DEL', KEYS[2])
  return {'closed', mode, 'closed', 'probe_succeeded'}
end
if state == 'closed' and mode == 'auto' and (failed or slow) then
  local calls, failures, slows = 0, 0, 0
  local buckets = redis.call('HGETALL', KEYS[2])
  local t = {}
  for j = 1, #buckets, 2 do t[buckets[j]] = tonumber(buckets[j + 1]) end
  for b = 0, window - 1 do
    local at = t['t' .. b]
    if at and at > sec - window then
      calls = calls + (t['n' .. b] or 0)
      failures = failures + (t['f' .. b] or 0)
      slows = slows + (t['s' .. b] or 0)
    end
  end
  if calls >= min_calls then
    if failures >= calls * tonumber(ARGV[7]) then return open('failure_rate') end
    if slows > calls * tonumber(ARGV[8]) then return open('slow_calls') end
  end
end
return {state, mode, '', ''}
"""

# Force a mode. KEYS: state hash, window hash. ARGV: mode, now. ``auto`` starts closed with an empty window.
_SET_MODE = """
redis.call('HSET', KEYS[1], 'mode', ARGV[1])
if ARGV[1] == 'auto' then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'probes', 0, 'since', ARGV[2])
  redis.call('DEL', KEYS[2])
end
return 1
"""


@dataclass(frozen=True)
class Settings:
    window_s: int = 30
    min_calls: int = 10
    failure_rate: float = 0.5
    slow_call_s: float = 3.0
    open_s: float = 30.0
    probes: int = 3
    # How long a probe in flight holds its place (longer than any channel call can take).
    probe_lease_s: float = 60.0

    @classmethod
    def from_django(cls) -> Settings:
        from django.conf import settings

        return cls(
            window_s=settings.CHANNEL_BREAKER_WINDOW_S,
            min_calls=settings.CHANNEL_BREAKER_MIN_CALLS,
            failure_rate=settings.CHANNEL_BREAKER_FAILURE_RATE,
            slow_call_s=settings.CHANNEL_BREAKER_SLOW_CALL_S,
            open_s=settings.CHANNEL_BREAKER_OPEN_S,
            probes=settings.CHANNEL_BREAKER_PROBES,
            probe_lease_s=settings.CHANNEL_CONNECT_TIMEOUT_S + settings.CHANNEL_READ_TIMEOUT_S
            + settings.CHANNEL_WRITE_TIMEOUT_S + 30,
        )


@dataclass(frozen=True)
class Admission:
    """The breaker's answer before a call: whether it may go out, and whether it is a half-open probe."""

    allowed: bool
    probe: bool = False
    retry_after_s: float = 0.0
    shared: bool = True  # decided with Redis (else by the local breaker)


class LocalBreaker:
    """A per-process breaker (the fallback while Redis is unreachable): ``threshold`` failures in a row open
    it for ``cooldown_s``; then one trial call goes through, and its success closes it."""

    def __init__(
        self, channel: str, account: str = "", *, threshold: int = 5, cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.channel = channel
        self.account = account
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._trial_running = False
        self._lock = threading.Lock()
        LOCAL_STATE.labels(channel=channel, account=account).set(CLOSED)

    def allow(self) -> bool:
        """Whether a call may go out now. In half-open state only one trial call goes out at a time."""
        with self._lock:
            if self.state == OPEN and self.clock() - self.opened_at >= self.cooldown_s:
                self._set(HALF_OPEN)
            if self.state == CLOSED:
                return True
            if self.state == HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return True
            return False

    def retry_after_s(self) -> float:
        return max(self.cooldown_s - (self.clock() - self.opened_at), 1.0)

    def record(self, *, failed: bool) -> None:
        with self._lock:
            self._trial_running = False
            if not failed:
                self.failures = 0
                if self.state != CLOSED:
                    self._set(CLOSED)
                return
            self.failures += 1
            if self.state == HALF_OPEN or self.failures >= self.threshold:
                self.opened_at = self.clock()
                if self.state != OPEN:
                    self._set(OPEN)

    def _set(self, state: int) -> None:
        before, self.state = self.state, state
        LOCAL_STATE.labels(channel=self.channel, account=self.account).set(state)
        names = {CLOSED: "closed", HALF_OPEN: "half-open", OPEN: "open"}
        log.log(
            logging.WARNING if state == OPEN else logging.INFO,
            "channel %s local circuit %s -> %s after %d failures", self.channel, names[before], names[state],
            self.failures, extra={"channel": self.channel, "breaker_state": names[state], "breaker_scope": "local"},
        )


class SharedBreaker:
    """The breaker of one channel account, its state in Redis (see the module's docstring)."""

    def __init__(
        self, channel: str, account: str, client: redis.Redis, settings: Settings | None = None, *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.channel = channel
        self.account = account
        self.key = f"breaker:{channel}:{account}"
        self.window_key = self.key + ":window"
        self.client = client
        self.settings = settings or Settings()
        self.clock = clock
        self.local = LocalBreaker(channel, account, threshold=self.settings.min_calls,
                                  cooldown_s=self.settings.open_s, clock=clock)
        self._admit = client.register_script(_ADMIT)
        self._record = client.register_script(_RECORD)
        self._set_mode = client.register_script(_SET_MODE)
        self._lock = threading.Lock()
        self._closed_seen_at: float | None = None  # when Redis last told this process "closed"
        self._redis_down_since: float | None = None
        self._redis_retry_at = 0.0

    # -- around every call ---------------------------------------------------------------------------

    def before_call(self) -> Admission:
        """Whether a call may go out now (a half-open breaker admits at most ``probes`` at once)."""
        now = self.clock()
        with self._lock:
            trusted = self._closed_seen_at is not None and now - self._closed_seen_at < TRUST_S
        if trusted or not self._redis_usable(now):
            return self._local_admission(shared=trusted)
        s = self.settings
        try:
            decision, state, mode, retry_after, transition = self._admit(
                keys=[self.key], args=[repr(now), s.open_s, s.probes, s.probe_lease_s]
            )
        except redis.RedisError as exc:
            self._redis_failed(exc)
            return self._local_admission(shared=False)
        self._redis_ok()
        state, mode = _text(state), _text(mode)
        self._learn(state, now)
        if transition:
            self._transitioned(_text(transition), "open_s elapsed")
        if not decision:
            return Admission(False, retry_after_s=max(float(retry_after), 1.0))
        return Admission(True, probe=decision == 2)

    def after_call(self, admission: Admission, *, failed: bool, elapsed_s: float) -> None:
        """Count a call that went out: ``failed`` if it ended retryable or unknown."""
        now = self.clock()
        if not self._redis_usable(now):
            self._count_locally(failed)
            return
        s = self.settings
        slow = elapsed_s > s.slow_call_s
        try:
            state, mode, transition, reason = self._record(
                keys=[self.key, self.window_key],
                args=[repr(now), int(failed), int(slow), int(admission.probe), s.window_s, s.min_calls,
                      s.failure_rate, SLOW_SHARE, s.open_s],
            )
        except redis.RedisError as exc:
            self._redis_failed(exc)
            self._count_locally(failed)
            return
        self._redis_ok()
        self._learn(_text(state), now)
        if transition:
            self._transitioned(_text(transition), _text(reason))

    # -- ops ------------------------------------------------------------------------------------------

    def set_mode(self, mode: str) -> None:
        """Force the breaker open or closed, or give it back to the automatic rules (``auto``)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._set_mode(keys=[self.key, self.window_key], args=[mode, repr(self.clock())])
        with self._lock:
            self._closed_seen_at = None

    def is_open(self) -> bool:
        """Whether calls to this account are refused now (open, or forced open): where a new charge must not go.
        Half-open is not open: its probes may go. With Redis down, what this process has seen itself."""
        try:
            return bool(self.status()["effective"] == "open")
        except redis.RedisError:
            return self.local.state == OPEN and self.clock() - self.local.opened_at < self.local.cooldown_s

    def status(self) -> dict[str, Any]:
        """The shared state as ops see it (one round trip); raises ``redis.RedisError`` if Redis is down."""
        return _status(self.client.hgetall(self.key), self.clock())

    def reset(self) -> None:
        """Forget everything: mode, state and window (tests)."""
        self.client.delete(self.key, self.window_key)
        with self._lock:
            self._closed_seen_at = None

    # -- internals ------------------------------------------------------------------------------------

    def _count_locally(self, failed: bool) -> None:
        REDIS_ERRORS.labels(channel=self.channel).inc()
        self.local.record(failed=failed)

    def _local_admission(self, *, shared: bool) -> Admission:
        if shared or self.local.allow():
            return Admission(True, shared=shared)
        return Admission(False, retry_after_s=self.local.retry_after_s(), shared=False)

    def _learn(self, state: str, now: float) -> None:
        with self._lock:
            self._closed_seen_at = now if state == "closed" else None

    def _transitioned(self, to: str, reason: str) -> None:
        TRANSITIONS.labels(channel=self.channel, account=self.account, to=to).inc()
        log.log(
            logging.WARNING if to == "open" else logging.INFO,
            "channel %s account %s circuit -> %s (%s)", self.channel, self.account, to, reason,
            extra={"channel": self.channel, "breaker_state": to, "breaker_reason": reason, "key_path": True},
        )

    def _redis_usable(self, now: float) -> bool:
        with self._lock:
            return self._redis_down_since is None or now >= self._redis_retry_at

    def _redis_failed(self, exc: Exception) -> None:
        now = self.clock()
        with self._lock:
            first = self._redis_down_since is None
            if first:
                self._redis_down_since = now
            self._redis_retry_at = now + REDIS_RETRY_S
            self._closed_seen_at = None
        if first:
            log.warning("channel %s breaker: Redis unreachable (%s); calls go through, counted by this process",
                        self.channel, exc, extra={"channel": self.channel})

    def _redis_ok(self) -> None:
        with self._lock:
            since, self._redis_down_since = self._redis_down_since, None
        if since is not None:
            # What this process counted alone is not carried over: Redis decides again, for everyone.
            self.local = LocalBreaker(self.channel, self.account, threshold=self.settings.min_calls,
                                      cooldown_s=self.settings.open_s, clock=self.clock)
            log.warning("channel %s breaker: Redis is back after %.0f s", self.channel, self.clock() - since,
                        extra={"channel": self.channel})


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _status(raw: dict, now: float) -> dict[str, Any]:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    mode = fields.get("mode", "auto")
    state = fields.get("state", "closed")
    if state == "open" and now >= float(fields.get("open_until", 0)):
        state = "half_open"  # the next call will probe
    effective = {"force_open": "open", "force_closed": "closed"}.get(mode, state)
    return {
        "mode": mode, "state": state, "effective": effective, "reason": fields.get("reason", ""),
        "since": float(fields["since"]) if "since" in fields else None,
        "open_until": float(fields["open_until"]) if state == "open" else None,
    }


class BreakerCollector(Collector):
    """Scrape-time gauges of the shared breakers (one Redis round trip for all of them):
    ``payments_channel_breaker_state`` (what calls meet: 0 closed, 1 half-open, 2 open, forced modes included)
    and ``payments_channel_breaker_mode`` (1 for the breaker's mode: auto, force_open or force_closed)."""

    def __init__(self, breakers: Callable[[], Iterable[SharedBreaker]]) -> None:
        self.breakers = breakers

    def collect(self) -> Iterator[Metric]:
        try:
            breakers = list(self.breakers())
            if not breakers:
                return
            pipe = breakers[0].client.pipeline(transaction=False)
            for breaker in breakers:
                pipe.hgetall(breaker.key)
            rows = pipe.execute()
        except Exception as exc:  # a scrape must answer with Redis down
            log.warning("metrics: breaker states failed: %s", exc)
            return
        state = GaugeMetricFamily(
            "payments_channel_breaker_state",
            "Shared circuit breaker state of a channel account: 0 closed, 1 half-open, 2 open.",
            labels=["channel", "account"],
        )
        mode = GaugeMetricFamily(
            "payments_channel_breaker_mode", "Mode of a channel account's breaker (1 for the current one).",
            labels=["channel", "account", "mode"],
        )
        for breaker, raw in zip(breakers, rows, strict=True):
            status = _status(raw, breaker.clock())
            state.add_metric([breaker.channel, breaker.account], STATE_VALUES[status["effective"]])
            for name in MODES:
                mode.add_metric([breaker.channel, breaker.account, name], float(status["mode"] == name))
        yield from (state, mode)


@functools.cache
def redis_client(url: str) -> redis.Redis:
    """A client with short timeouts: the breaker must never hold a payment up for long."""
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5,
                                health_check_interval=30)
