"""Real processes for the end-to-end tests: the sandbox simulator, a Celery worker and the outbox dispatcher.

The worker and the dispatcher are separate processes that use the test database, the test Redis and the
broker, exactly as in production; the simulator is the channel. The broker is ``CELERY_BROKER_URL``, Redis
unless set: `make test` runs this package a second time on RabbitMQ. Only the test's own process (the API and the
callback endpoint, served by pytest-django's live server) shares memory with the test.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings
from kombu.transport.native_delayed_delivery import level_name

from channels.registry import get_channel
from payments_site.celery import app as celery_app

ROOT = Path(__file__).resolve().parents[2]
WORKER_NAME = "e2e@localhost"


def broker_is_rabbitmq() -> bool:
    return celery_app.connection_for_write().transport.driver_type == "amqp"


def broker_queue_depth(queue: str) -> int:
    """Messages waiting in ``queue`` (not counting those a worker holds), on either broker."""
    with celery_app.connection_for_write() as conn:
        try:
            return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
        except conn.channel_errors:
            return 0  # not there: Redis has no empty queues, and RabbitMQ's is declared by the first worker


def empty_the_broker() -> None:
    """Lose every message, as a broker that restarts empty would, and empty the test Redis (the cache, the rate
    limits, and the broker when it is Redis). On RabbitMQ that is each queue of the tasks and of Celery's
    delayed delivery (retries waiting for their countdown): a vhost outlives a test run."""
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    if not broker_is_rabbitmq():
        return
    names = [queue.name for queue in celery_app.conf.task_queues] + [level_name(n) for n in range(28)]
    with celery_app.connection_for_write() as conn:
        for name in names:
            channel = conn.channel()
            try:
                channel.queue_purge(name)
            except conn.channel_errors:
                pass  # not declared yet: nothing to lose (the broker closed this channel)
            finally:
                with contextlib.suppress(*conn.channel_errors, *conn.connection_errors):
                    channel.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], Any], *, timeout_s: float = 20, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy; fail the test with ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Simulator:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.worker_env: dict[str, str] = {}  # settings the worker needs to use this simulator
        self.http = httpx.Client(base_url=base_url, timeout=10)

    def reset(self) -> None:
        """Faults cleared, and the notifications still due forgotten. At the end of a test, clearing the faults
        alone let the retry of a notification dropped by a fault arrive while the test's rows were being flushed:
        the callback's insert and the flush's TRUNCATE deadlocked (a WeChat Pay test, once, on RabbitMQ)."""
        self.http.post("/_sim/reset").raise_for_status()
        self.http.post("/_sim/clock", json={"speed": 1000}).raise_for_status()

    def fault(self, operation: str, mode: str, count: int | None = None, **extra: Any) -> None:
        body = {"operation": operation, "mode": mode, **extra}
        if count is not None:
            body["count"] = count
        self.http.post("/_sim/faults", json=body).raise_for_status()

    def clear_faults(self) -> None:
        self.http.delete("/_sim/faults").raise_for_status()

    def trade(self, out_trade_no: str) -> dict:
        response = self.http.get(f"/_sim/trades/{out_trade_no}")
        return response.json() if response.status_code == 200 else {}


def start_simulator(
    channel: str, sim_env: dict[str, str], log_dir: Path, simulator_class: type[Simulator] = Simulator
) -> tuple[subprocess.Popen, Simulator]:
    """Start ``manage.py run_simulator <channel>`` on a free port with ``sim_env``; wait until it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_simulator", channel, "--port", str(port)],
        cwd=ROOT, env={**os.environ, **sim_env}, stdout=(log_dir / f"{channel}.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    sim = simulator_class(f"http://127.0.0.1:{port}")

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the {channel} simulator exited at start; see {log_dir}")
        try:
            return sim.http.post("/_sim/reset").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, what=f"the {channel} simulator")
    return proc, sim


@contextlib.contextmanager
def channel_settings(overrides: dict[str, Any]) -> Iterator[None]:
    """Point the test process (which serves callbacks and closes orders) at a simulator."""
    previous = {name: getattr(settings, name) for name in overrides}
    for name, value in overrides.items():
        setattr(settings, name, value)
    get_channel.cache_clear()
    try:
        yield
    finally:
        for name, value in previous.items():
            setattr(settings, name, value)
        get_channel.cache_clear()


def reset_breakers() -> None:
    """Forget every channel breaker's state (shared by the worker through Redis): no test inherits one open."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter("breaker:*"))
    if keys:
        client.delete(*keys)


# Package scope: the worker must be gone before other tests commit orders it would pick up.
@pytest.fixture(scope="package")
def sandbox_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    account = {"SANDBOX_MERCHANT_ID": settings.SANDBOX_MERCHANT_ID, "SANDBOX_SECRET": settings.SANDBOX_SECRET}
    proc, sim = start_simulator("sandbox", account, tmp_path_factory.mktemp("sim"))
    # A second account at the simulated channel, as its console opens one: the backup account (new charges go
    # there while the primary's breaker is open; tests/e2e/test_backup_account.py).
    backup = sim.http.post("/_sim/accounts").json()
    backup_settings = {"SANDBOX_BACKUP_MERCHANT_ID": backup["merchant_id"], "SANDBOX_BACKUP_SECRET": backup["secret"]}
    sim.worker_env = {**account, **backup_settings, "SANDBOX_API_BASE": sim.base_url}
    with channel_settings({"SANDBOX_API_BASE": sim.base_url, **backup_settings}):
        yield sim
    _stop(proc)


# Simulators of other channels, defined by their own fixture modules imported above; the worker is
# configured for every one that exists.
OTHER_SIMULATORS = ("alipay_sim", "wechatpay_sim")


def database_url() -> str:
    """``DATABASE_URL`` of the test database, for the processes the tests start."""
    db = settings.DATABASES["default"]
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def start_dispatcher(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``manage.py run_dispatcher`` with ``env``; wait until it LISTENs (its log says so)."""
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_dispatcher"], cwd=ROOT, env={**env, "SERVICE": "dispatcher"},
        stdout=log_path.open("w"), stderr=subprocess.STDOUT,
    )

    def listening() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the dispatcher exited at start; see {log_path}")
        return "listening on payments_tasks" in log_path.read_text()

    wait_until(listening, timeout_s=30, what=f"the outbox dispatcher (standby? see {log_path})")
    return proc


# Merchant webhooks in the e2e stack: receivers on loopback (tests/webhook_receiver.py), a compressed retry
# schedule and a short timeout, and beat sending what is due every half second. Beat's other sweeps wait an hour:
# the tests that need one run it themselves.
WEBHOOK_ENV = {
    "WEBHOOK_ALLOWED_HOSTS": "localhost,127.0.0.0/8,::1", "WEBHOOK_RETRY_SCHEDULE_S": "1,1,2",
    "WEBHOOK_TIMEOUT_S": "3", "WEBHOOK_SWEEP_INTERVAL_S": "0.5", "SWEEP_INTERVAL_S": "3600",
}


def start_beat(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "payments_site", "beat", "-l", "INFO",
         "-s", str(log_path.with_name("beat-schedule"))],
        cwd=ROOT, env={**env, "SERVICE": "beat"}, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
    )
    wait_until(lambda: proc.poll() is not None or "Sending due task sweep-webhooks" in log_path.read_text(),
               timeout_s=30, what=f"beat's first webhook sweep (see {log_path})")
    if proc.poll() is not None:
        pytest.fail(f"beat exited at start; see {log_path}")
    return proc


@pytest.fixture(scope="package")
def worker(
    request: pytest.FixtureRequest, django_db_setup, live_server, sandbox_sim: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    """A real Celery worker process on the test database, the test Redis and the broker, and the outbox
    dispatcher that publishes the tasks the test process enqueues."""
    empty_the_broker()
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        **sandbox_sim.worker_env,
        "PUBLIC_BASE_URL": live_server.url,
        "CHANNEL_READ_TIMEOUT_S": "2",
        "TASK_RETRY_BACKOFF_S": "1",
        "TASK_RETRY_BACKOFF_MAX_S": "2",
        "TASK_MAX_RETRIES": "4",
        # A breaker that opens (a test that exhausts the channel) probes again after a second; the e2e fixture
        # also resets every breaker between tests.
        "CHANNEL_BREAKER_OPEN_S": "1",
        # Keep every line: the tests read the worker's log (sampling has its own tests).
        "LOG_SAMPLE_RATE": "1", "LOG_SAMPLE_LOAD_TIERS": "",
        **WEBHOOK_ENV,
    }
    for name in OTHER_SIMULATORS:
        try:
            env.update(request.getfixturevalue(name).worker_env)
        except pytest.FixtureLookupError:
            pass
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "payments_site", "worker", "-P", "threads", "-c", "4",
         "-n", WORKER_NAME, "-Q", "charges,callbacks,refunds,webhooks,reconciliation",
         "--without-gossip", "--without-mingle", "-l", "INFO"],
        cwd=ROOT, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the worker exited at start; see {log_path}")
        return bool(celery_app.control.ping(destination=[WORKER_NAME], timeout=0.5))

    wait_until(ready, timeout_s=30, what="the Celery worker")
    try:
        dispatcher = start_dispatcher(env, log_path.with_name("dispatcher.log"))
    except BaseException:
        _stop(proc)
        raise
    beat = start_beat(env, log_path.with_name("beat.log"))
    yield log_path
    _stop(beat)
    _stop(dispatcher)
    _stop(proc)


@pytest.fixture
def e2e(transactional_db, worker: Path, sandbox_sim: Simulator, live_server) -> Iterator[Simulator]:
    """A clean simulator (clock fast), broker and circuit breakers for one end-to-end test."""
    sandbox_sim.reset()
    celery_app.control.purge()
    reset_breakers()
    yield sandbox_sim
    sandbox_sim.reset()  # nothing it still meant to send arrives while the test's rows are flushed (Simulator.reset)


# The other channels' simulator fixtures (the worker picks up each one that a test session uses).
from tests.e2e.alipay_fixtures import alipay_sim  # noqa: E402,F401
from tests.e2e.wechatpay_fixtures import wechatpay_sim  # noqa: E402,F401
