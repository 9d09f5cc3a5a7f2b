"""Asynchronous notifications with the channel's retry schedule and the notify faults (SIMULATORS.md)."""

from __future__ import annotations

import heapq
import ipaddress
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from channels.base import ChannelError
from channels.http import send

from .faults import NOTIFY_MODES, Clock, FaultBook

log = logging.getLogger(__name__)

OUT_OF_ORDER_HOLD_S = 2.0  # simulated seconds a held notification waits for a successor
# Attempts in flight at once (to different trades): a real channel notifies many merchants concurrently, and one
# slow receiver must not hold up every other trade's notification. An attempt holds its thread for as long as the
# receiver takes to answer, queueing included, so the pool sends at most SEND_CONCURRENCY ÷ that time per second:
# with 16 threads and a busy web answering in 0.3 s, 53 notifications/s. That cap, not our stack, then decided how
# long a paid trade waited for its notification (1.6 s at the median in `make bench-e2e`, a status poll for most
# payers). 128 is as many as the bench has payers, so the pool never is the limit there.
SEND_CONCURRENCY = 128
SEND_TIMEOUT = httpx.Timeout(5.0, connect=2.0)

# render(tamper_amount, bad_signature) -> (body, headers); supplied by the channel for each notification.
Renderer = Callable[[bool, bool], tuple[bytes, dict[str, str]]]


@dataclass(eq=False)
class Notification:
    id: str
    type: str
    url: str
    render: Renderer
    attempts: list[dict[str, Any]] = field(default_factory=list)
    tries: int = 0  # scheduled attempts made (a duplicate_notify pair counts once)
    held: bool = False
    generation: int = 0
    key: str = ""  # the trade it is about: one trade's notifications are sent one at a time, in order


def rfc3339(t: float, ms: bool = False) -> str:
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
    return f"{text}.{int(t * 1000) % 1000:03d}Z" if ms else f"{text}Z"


def is_loopback_url(url: str, extra_hosts: Iterable[str] = ()) -> bool:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return False
    if parts.scheme not in ("http", "https"):
        return False
    if host == "localhost" or host in extra_hosts:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Notifier:
    """One background thread takes due notifications in order and decides each attempt's fault; a bounded pool
    (``SEND_CONCURRENCY`` threads) sends them.

    What stays deterministic: faults are taken by the one scheduling thread, in due order; the notifications of
    one trade (``Notification.key``) are sent one at a time, in that order (a trade's next attempt waits for the
    one in flight); and a notification held by the out-of-order fault is released only once its successor's
    send has finished, so it arrives after it. A receiver that is down fails fast on loopback, and a slow one
    costs at most SEND_TIMEOUT per attempt, holding one pool thread, not the other trades.
    Only loopback receivers (plus `extra_hosts`) are ever contacted: the simulator must not call out.
    """

    def __init__(
        self,
        faults: FaultBook,
        clock: Clock,
        schedule: tuple[float, ...],
        acknowledged: Callable[[httpx.Response], bool],
        extra_hosts: Iterable[str] = (),
    ) -> None:
        self._faults, self._clock, self._schedule, self._acknowledged = faults, clock, schedule, acknowledged
        self._extra_hosts = frozenset(extra_hosts)
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Notification]] = []
        self._seq = itertools.count()
        self._generation = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        limits = httpx.Limits(max_connections=SEND_CONCURRENCY, max_keepalive_connections=SEND_CONCURRENCY)
        self._client = httpx.Client(timeout=SEND_TIMEOUT, trust_env=False, limits=limits)
        self._pool = ThreadPoolExecutor(SEND_CONCURRENCY, thread_name_prefix="sim-notify")
        # Keys with an attempt in flight, and the attempts (with their fault) waiting behind it.
        self._busy: dict[str, deque[tuple[Notification, Any, Any]]] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sim-notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=SEND_TIMEOUT.read or 5.0)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def reset(self) -> None:
        # Attempts already in flight finish, but the generation bump stops them from being rescheduled.
        with self._cond:
            self._heap.clear()
            self._generation += 1

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def submit(self, notification: Notification) -> None:
        with self._cond:
            notification.generation = self._generation
            self._schedule_at(notification, self._clock.now())

    def attempts(self, notifications: Iterable[Notification]) -> list[dict[str, Any]]:
        with self._cond:
            return sorted((dict(a) for n in notifications for a in n.attempts), key=lambda a: a["at"])

    def _schedule_at(self, notification: Notification, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), notification))
        self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                wait = self._clock.real_seconds_until(self._heap[0][0]) if self._heap else 0.5
                if wait > 0:
                    self._cond.wait(min(wait, 0.5))
                    continue
                notification = heapq.heappop(self._heap)[2]
            try:
                self._dispatch(notification)
            except Exception:  # the thread must survive anything a receiver or a bug throws at it
                log.exception("notification %s: attempt failed unexpectedly", notification.id)

    def _dispatch(self, n: Notification) -> None:
        """Decide the attempt's faults (here, in due order), then send it on the pool after the trade's attempt in
        flight, if any."""
        fault = None if n.held else self._faults.take("notify", NOTIFY_MODES)
        mode = fault.mode if fault else None
        if mode == "out_of_order_notify":
            with self._cond:
                n.held = True
                self._schedule_at(n, self._clock.now() + OUT_OF_ORDER_HOLD_S)
            return
        n.held = False
        latency = self._faults.take("notify", ("latency",))
        key = n.key or n.id
        with self._cond:
            waiting = self._busy.get(key)
            if waiting is not None:
                waiting.append((n, mode, latency))
                return
            self._busy[key] = deque()
        self._pool.submit(self._run_key, key, n, mode, latency)

    def _run_key(self, key: str, n: Notification, mode: Any, latency: Any) -> None:
        while True:
            try:
                self._attempt(n, mode, latency)
            except Exception:  # a pool thread must survive anything a receiver or a bug throws at it
                log.exception("notification %s: attempt failed unexpectedly", n.id)
            with self._cond:
                waiting = self._busy[key]
                while waiting and waiting[0][0].generation != self._generation:
                    waiting.popleft()  # queued before a reset: forgotten, as the heap's are
                if not waiting:
                    del self._busy[key]
                    return
                n, mode, latency = waiting.popleft()

    def _attempt(self, n: Notification, mode: str | None, latency: Any) -> None:
        if latency:
            time.sleep(latency.latency_ms / 1000)
        acknowledged = False
        if mode == "drop_notify":
            self._record(n, False)  # the channel made the attempt; the receiver never saw it
        else:
            # A duplicate is the same request twice: rendered once, since a render stamps the time (Alipay's
            # notify_time), and one made a second later would not be a duplicate.
            body, headers = n.render(mode == "tamper_amount_notify", mode == "bad_signature_notify")
            for _ in range(2 if mode == "duplicate_notify" else 1):
                acknowledged = self._send(n, body, headers) or acknowledged
            self._release_held(n)
        n.tries += 1
        with self._cond:
            if acknowledged or n.generation != self._generation:
                return
            if n.tries > len(self._schedule):
                log.info("notification %s: given up after %d attempts", n.id, n.tries)
                return
            self._schedule_at(n, self._clock.now() + self._schedule[n.tries - 1])

    def _send(self, n: Notification, body: bytes, headers: dict[str, str]) -> bool:
        acknowledged = False
        if is_loopback_url(n.url, self._extra_hosts):
            # Sent as the channel calls are (channels.http): on a kept connection, at a third of httpx's CPU.
            request = self._client.build_request("POST", n.url, content=body, headers=headers)
            try:
                acknowledged = self._acknowledged(send(self._client, request))
            except ChannelError as exc:
                log.info("notification %s: receiver unreachable (%s)", n.id, exc)
        else:
            log.warning("notification %s: notify_url host is not loopback, not sent", n.id)
        self._record(n, acknowledged)
        return acknowledged

    def _record(self, n: Notification, acknowledged: bool) -> None:
        with self._cond:
            n.attempts.append(
                {"at": rfc3339(time.time(), ms=True), "acknowledged": acknowledged, "id": n.id, "type": n.type}
            )

    def _release_held(self, sent: Notification) -> None:
        # "Out of order": a held notification goes right after the next one that was actually sent.
        with self._cond:
            held = [entry for entry in self._heap if entry[2].held and entry[2] is not sent]
            if held:
                self._heap = [entry for entry in self._heap if entry not in held]
                heapq.heapify(self._heap)
                for _, _, n in held:
                    self._schedule_at(n, self._clock.now())
