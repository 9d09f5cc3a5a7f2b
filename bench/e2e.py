"""End-to-end payment throughput (`make bench-e2e`): create → pay page → succeeded, through the whole stack.

Starts every process of the Procfile that a payment goes through (web, the workers, beat, the dispatcher and the
sandbox simulator), with the Procfile's own commands and flags but production settings (DEBUG=0, JSON logs to a
file per process, free ports, a database of its own, ``payments_bench_e2e``, and Redis db 3). C concurrent payers
each create an order with a ``notify_url`` pointing at this process's webhook receiver, pay it on the simulator's
pay page once they hear ``order.pending``, and take the order as paid when ``order.succeeded`` arrives. Until a
webhook arrives, a payer polls ``GET /orders/{id}`` at most once a second.

It runs the configurations one after the other in one invocation: zero channel latency, and 200 ms on the
channel's create and query (the simulator's ``latency`` fault, armed until cleared), ``BENCH_ROUNDS`` times
each, alternating, so that noise from the rest of the machine falls on both. Each run prints paid orders/s,
create → succeeded p50/p99, the cores busy (ours, from each process's CPU time, and the whole machine's) and
the CPU seconds per paid order of each process group: web, worker, webhooks, beat, dispatcher, PostgreSQL (the
backends of the bench database), Redis (the whole server: it is shared with others), simulator, load generator.

The ceiling is measured in the same invocation from two primitives: a bare Celery worker on the same Redis
(acks_late, prefetch 1, a no-op task: CPU per task of worker, broker and publisher together) and a create request
(CPU of web, PostgreSQL, Redis and client per create, with nothing consuming the charges). The pipeline per
payment is ``CEILING_TASKS`` tasks and ``CEILING_REQUESTS`` create-sized requests, plus what the simulator and the
load generator spend per paid order (measured in the zero-latency runs: they share the cores); with the machine's
cores, ceiling = cores / (tasks × task CPU + requests × create CPU + simulator and load generator CPU). The
pipeline's paid/s is printed as a ratio to it.

Knobs (environment): BENCH_ORDERS (per run), BENCH_CONCURRENCY, BENCH_LATENCY_MS, BENCH_ROUNDS, BENCH_WARMUP,
BENCH_DB, BENCH_REDIS_URL, BENCH_KEEP (keep the logs' directory), BENCH_ONLY (zero|latency), BENCH_NO_CEILING,
BENCH_PROFILE=<seconds> (py-spy records web, worker, webhooks and dispatcher, the threads holding the GIL, during the
first zero-latency run;
collapsed stacks in the logs' directory; needs ``py-spy`` on PATH).
Prints key=value lines; exits 0 once it has measured: it is a measurement, not a test.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable

CORES = os.cpu_count() or 2
ORDERS = int(os.environ.get("BENCH_ORDERS", 2000))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", 128))
LATENCY_MS = int(os.environ.get("BENCH_LATENCY_MS", 200))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 1))
WARMUP = int(os.environ.get("BENCH_WARMUP", 300))
DB_NAME = os.environ.get("BENCH_DB", "payments_bench_e2e")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")
ONLY = os.environ.get("BENCH_ONLY", "")
ORDER_TIMEOUT_S = 120.0
POLL_S = 1.0  # a payer asks about its order at most this often, while no webhook has told it
# The model of a payment: three tasks (charge, notification, one webhook) and two requests (create,
# callback); the pipeline now also sends order.pending's webhook, a fourth task, printed beside it.
CEILING_TASKS = int(os.environ.get("BENCH_CEILING_TASKS", 3))
CEILING_REQUESTS = int(os.environ.get("BENCH_CEILING_REQUESTS", 2))
# The Procfile's processes that a sandbox payment goes through.
STACK = ("web", "worker", "webhooks", "reconciliation", "beat", "dispatcher", "sim_sandbox")
SIMULATOR_GROUPS = ("sim_sandbox",)
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- CPU accounting from /proc ---------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` (user + system, with its reaped children's), 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    # fields[0] is field 3 (state): utime is 14, stime 15, cutime 16, cstime 17.
    return sum(int(x) for x in fields[11:15]) / TICK


def children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(root: int, tree: dict[int, list[int]]) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, ()))
    return out


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


# -- the stack ----------------------------------------------------------------------------------------------


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            name, command = line.split(":", 1)
            entries[name.strip()] = command.strip()
    return entries


@dataclass
class Stack:
    workdir: Path
    env: dict[str, str]
    web_port: int
    sim_port: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, names: list[str]) -> None:
        for name in names:
            command = procfile()[name]
            command = re.sub(r"--schedule \S+", f"--schedule {self.workdir / 'celerybeat-schedule'}", command)
            if name.startswith("sim_"):
                command += f" --port {self.sim_port}"
            log = (self.workdir / f"{name}.log").open("w")
            # The Procfile's commands are shell lines (SERVICE=web .venv/bin/gunicorn … $WEB_PORT …).
            self.procs[name] = subprocess.Popen(
                ["bash", "-c", f"exec {command}" if not command.startswith(("SERVICE=", "sleep")) else command],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def stop(self, names: list[str] | None = None) -> None:
        for name in list(names or self.procs):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.workdir / (name + '.log')}")

    def pids(self) -> dict[str, list[int]]:
        tree = children_map()
        return {name: descendants(proc.pid, tree) for name, proc in self.procs.items()}


def sh_env(base: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in base.items() if k not in ("CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")}


def prepare_database(env: dict[str, str]) -> None:
    import psycopg

    with psycopg.connect(dbname="postgres", host="127.0.0.1", user="postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    subprocess.run([PY, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL)


SETUP = """
from payments import services
from payments.models import Merchant
m, key = services.merchant_create(name="bench-e2e")
Merchant.objects.filter(pk=m.pk).update(rate_limit_per_s=1_000_000)
print(key)
"""


def create_merchant(env: dict[str, str]) -> str:
    out = subprocess.run([PY, "manage.py", "shell", "-c", SETUP], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def wait_for(check, what: str, timeout_s: float = 60, stack: Stack | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if stack is not None:
            stack.check_alive()
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def http_status(port: int, method: str, path: str, body: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# -- the merchant's webhook receiver ------------------------------------------------------------------------


class Outcomes:
    """What webhooks (or polls) told the payers: (order id, event type) → (monotonic time, order object)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[tuple[str, str], tuple[float, dict]] = {}
        self.waiters: dict[tuple[str, str], threading.Event] = {}
        self.webhooks = 0

    def tell(self, order_id: str, type_: str, obj: dict, at: float) -> None:
        key = (order_id, type_)
        with self.lock:
            self.seen.setdefault(key, (at, obj))
            event = self.waiters.setdefault(key, threading.Event())
        event.set()

    def waiter(self, order_id: str, type_: str) -> threading.Event:
        with self.lock:
            return self.waiters.setdefault((order_id, type_), threading.Event())

    def get(self, order_id: str, type_: str) -> tuple[float, dict] | None:
        with self.lock:
            return self.seen.get((order_id, type_))


def start_receiver(outcomes: Outcomes) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the webhook client reuses its connections

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            at = time.monotonic()
            try:
                event = json.loads(body)
                obj = event["data"]["object"]
                outcomes.webhooks += 1
                outcomes.tell(obj["id"], event["type"], obj, at)
            except (ValueError, KeyError, TypeError):
                pass
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        # A merchant's web server listens with a backlog of hundreds; socketserver's default of 5 made a burst of
        # new webhook connections lose SYNs, each retried by the kernel a second later (1 s webhooks, and resets).
        request_queue_size = 1024

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


# -- payers -------------------------------------------------------------------------------------------------


@dataclass
class Result:
    paid: int = 0
    failed: int = 0
    timed_out: int = 0
    errors: int = 0
    polls: int = 0
    latencies: list[float] = field(default_factory=list)
    first_create: float = float("inf")
    last_success: float = 0.0


class Payer:
    def __init__(self, web_port: int, sim_port: int, key: str, receiver_url: str, outcomes: Outcomes) -> None:
        self.web = http.client.HTTPConnection("127.0.0.1", web_port, timeout=30)
        self.sim = http.client.HTTPConnection("127.0.0.1", sim_port, timeout=30)
        self.key, self.receiver_url, self.outcomes = key, receiver_url, outcomes

    def _call(self, conn: http.client.HTTPConnection, method: str, path: str, body: str | None,
              headers: dict[str, str]) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                conn.request(method, path, body, headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {self.key}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers.update({"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex})
        status, raw = self._call(self.web, method, f"/api/v1{path}", data, headers)
        return status, (json.loads(raw) if raw else {})

    def wait(self, order_id: str, type_: str, status: str, deadline: float, result: Result) -> tuple[float, dict]:
        """The order's ``type_`` webhook, or a poll that finds it in ``status`` (or finished otherwise)."""
        event = self.outcomes.waiter(order_id, type_)
        while True:
            if event.wait(POLL_S):
                found = self.outcomes.get(order_id, type_)
                assert found is not None
                return found
            if time.monotonic() > deadline:
                raise TimeoutError
            code, obj = self.api("GET", f"/orders/{order_id}")
            result.polls += 1
            if code == 200 and (obj.get("status") == status or obj.get("status") in ("failed", "closed")):
                self.outcomes.tell(order_id, f"poll:{obj['status']}", obj, time.monotonic())
                return time.monotonic(), obj

    def pay_one(self, number: int, run_id: str, result: Result, lock: threading.Lock) -> None:
        started = time.monotonic()
        deadline = started + ORDER_TIMEOUT_S
        code, order = self.api("POST", "/orders", {
            "merchant_order_no": f"{run_id}-{number}", "amount": 1050, "currency": "CNY", "channel": "sandbox",
            "notify_url": self.receiver_url,
        })
        if code != 201:
            with lock:
                result.errors += 1
            return
        with lock:
            result.first_create = min(result.first_create, started)
        _, pending = self.wait(order["id"], "order.pending", "pending", deadline, result)
        if pending.get("status") != "pending" or not pending.get("pay_url"):
            with lock:
                result.failed += 1
            return
        pay = urlsplit(pending["pay_url"])
        status, _ = self._call(self.sim, "POST", pay.path, "action=pay",
                               {"Content-Type": "application/x-www-form-urlencoded"})
        if status >= 400:
            with lock:
                result.errors += 1
            return
        at, done = self.wait(order["id"], "order.succeeded", "succeeded", deadline, result)
        with lock:
            if done.get("status") == "succeeded":
                result.paid += 1
                result.latencies.append(at - started)
                result.last_success = max(result.last_success, at)
            else:
                result.failed += 1


def drive(orders: int, concurrency: int, web_port: int, sim_port: int, key: str, receiver_url: str,
          outcomes: Outcomes) -> Result:
    run_id = f"e2e-{uuid.uuid4().hex[:8]}"
    numbers = itertools.count()
    result, lock = Result(), threading.Lock()

    def payer() -> None:
        client = Payer(web_port, sim_port, key, receiver_url, outcomes)
        while (number := next(numbers)) < orders:
            try:
                client.pay_one(number, run_id, result, lock)
            except TimeoutError:
                with lock:
                    result.timed_out += 1
            except (OSError, http.client.HTTPException, ValueError):
                with lock:
                    result.errors += 1

    threads = [threading.Thread(target=payer, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


# -- measuring ----------------------------------------------------------------------------------------------


class Meter:
    """CPU seconds per process group between ``start()`` and ``stop()``.

    PostgreSQL's backends of the bench database are sampled every 0.2 s as well: a backend that ends between two
    snapshots would take its CPU with it (a process that opens a connection per task makes many of those)."""

    def __init__(self, stack: Stack, pg_pids, redis_pid: int | None) -> None:
        self.stack, self.pg_pids, self.redis_pid = stack, pg_pids, redis_pid
        self.pg_base: dict[int, float] = {}
        self.pg_last: dict[int, float] = {}
        self.sampling = threading.Event()

    def _sample_pg(self) -> None:
        for pid in self.pg_pids():
            cpu = proc_cpu(pid)
            if cpu:
                self.pg_last[pid] = cpu

    def _pg_loop(self) -> None:
        while not self.sampling.wait(0.2):
            self._sample_pg()

    def snapshot(self) -> tuple[dict[str, dict[int, float]], float, tuple[float, float]]:
        groups = {name: {pid: proc_cpu(pid) for pid in pids} for name, pids in self.stack.pids().items()}
        if self.redis_pid:
            groups["redis"] = {self.redis_pid: proc_cpu(self.redis_pid)}
        times = os.times()
        return groups, times.user + times.system, machine_busy()

    def start(self) -> None:
        self._sample_pg()
        self.pg_base = dict(self.pg_last)
        self.sampler = threading.Thread(target=self._pg_loop, daemon=True)
        self.sampler.start()
        self.before = self.snapshot()
        self.started = time.monotonic()

    def stop(self) -> tuple[dict[str, float], float, float]:
        after = self.snapshot()
        wall = time.monotonic() - self.started
        self.sampling.set()
        self.sampler.join()
        self._sample_pg()
        cpu: dict[str, float] = {}
        for name, pids in after[0].items():
            before = self.before[0].get(name, {})
            cpu[name] = sum(max(value - before.get(pid, 0.0), 0.0) for pid, value in pids.items())
        cpu["loadgen"] = after[1] - self.before[1]
        cpu["postgres"] = sum(value - self.pg_base.get(pid, 0.0) for pid, value in self.pg_last.items())
        busy = (after[2][0] - self.before[2][0]) / TICK
        return cpu, wall, busy


def pg_backends(dsn_db: str):
    import psycopg

    conn = psycopg.connect(dbname=dsn_db, host="127.0.0.1", user="postgres", autocommit=True)
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    own = row[0] if row else 0

    def pids() -> list[int]:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> %s",
                            (dsn_db, own)).fetchall()
        return [row[0] for row in rows]

    return pids, conn


def redis_server_pid(url: str) -> int | None:
    import redis

    try:
        return int(redis.Redis.from_url(url).info("server")["process_id"])
    except Exception:
        return None


def project_groups(cpu: dict[str, float]) -> list[str]:
    return [name for name in cpu if name in procfile() and name not in SIMULATOR_GROUPS]


def report(label: str, result: Result, cpu: dict[str, float], wall: float, busy: float) -> dict[str, float]:
    window = max(result.last_success - result.first_create, 1e-9)
    paid = result.paid
    lat = sorted(result.latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")

    ours = sum(cpu.values())
    project = sum(cpu[name] for name in project_groups(cpu))
    line = {
        "paid_per_s": paid / window,
        "p50_s": pct(0.50),
        "p99_s": pct(0.99),
        "cores_busy_ours": ours / wall,
        "cores_busy_machine": busy / wall,
        "project_cpu_ms_per_paid": 1000 * project / max(paid, 1),
        "sim_loadgen_cpu_ms_per_paid": 1000 * sum(cpu.get(name, 0.0) for name in (*SIMULATOR_GROUPS, "loadgen"))
        / max(paid, 1),
    }
    print(f"[{label}] paid={paid} failed={result.failed} timed_out={result.timed_out} errors={result.errors} "
          f"polls={result.polls} window_s={window:.1f}")
    print(f"[{label}] paid_per_s={line['paid_per_s']:.1f} p50_s={line['p50_s']:.2f} p99_s={line['p99_s']:.2f} "
          f"cores_busy_ours={line['cores_busy_ours']:.2f} cores_busy_machine={line['cores_busy_machine']:.2f} "
          f"(of {CORES})")
    per = " ".join(f"{name}={1000 * value / max(paid, 1):.1f}" for name, value in sorted(cpu.items()))
    print(f"[{label}] cpu_ms_per_paid {per} project={line['project_cpu_ms_per_paid']:.1f} "
          f"all={1000 * ours / max(paid, 1):.1f}")
    return line


def set_latency(sim_port: int, latency_ms: int) -> None:
    assert http_status(sim_port, "DELETE", "/_sim/faults") == 200
    if latency_ms:
        for operation in ("create", "query"):
            body = json.dumps({"operation": operation, "mode": "latency", "latency_ms": latency_ms})
            assert http_status(sim_port, "POST", "/_sim/faults", body) in (200, 201)


def start_profilers(stack: Stack) -> list[subprocess.Popen]:
    seconds = os.environ.get("BENCH_PROFILE")
    if not seconds:
        return []
    out = []
    for name in ("web", "worker", "webhooks", "dispatcher"):
        proc = stack.procs.get(name)
        if proc is None:
            continue
        out.append(subprocess.Popen(
            ["py-spy", "record", "--pid", str(proc.pid), "--subprocesses", "--duration", seconds, "--rate", "200",
             "--nonblocking", "--gil", "--format", "raw", "--output", str(stack.workdir / f"profile-{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
    return out


# -- the ceiling's primitives -------------------------------------------------------------------------------

NOOP_APP = """
from celery import Celery
app = Celery("noop", broker={broker!r})
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True,
                worker_hijack_root_logger=False, task_default_queue="bench_noop")
@app.task(name="noop")
def noop():
    return None
"""


def measure_noop_tasks(workdir: Path, redis_pid: int | None, tasks: int = 3000) -> tuple[float, float]:
    """(tasks/s, CPU seconds per task of publisher + worker + broker) of bare Celery on the bench's Redis."""
    import redis

    (workdir / "noop_app.py").write_text(NOOP_APP.format(broker=REDIS_URL))
    sys.path.insert(0, str(workdir))
    import noop_app  # type: ignore[import-not-found]

    client = redis.Redis.from_url(REDIS_URL)
    client.delete("bench_noop")
    cpu0, redis0 = sum(os.times()[:2]), proc_cpu(redis_pid) if redis_pid else 0.0
    with noop_app.app.producer_or_acquire() as producer:
        for _ in range(tasks):
            noop_app.noop.apply_async(producer=producer)
    publish_cpu = sum(os.times()[:2]) - cpu0 + ((proc_cpu(redis_pid) - redis0) if redis_pid else 0.0)
    log = (workdir / "noop_worker.log").open("w")
    worker = subprocess.Popen(
        [PY, "-m", "celery", "-A", "noop_app", "worker", "-P", "prefork", "-c", str(CORES), "-Q", "bench_noop",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING"],
        cwd=workdir, env={**os.environ, "PYTHONPATH": str(workdir)}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: client.llen("bench_noop") < tasks - 50, "the no-op worker to start", 60)
        tree = children_map()
        pids = descendants(worker.pid, tree)
        cpu_w0 = {pid: proc_cpu(pid) for pid in pids}
        redis1 = proc_cpu(redis_pid) if redis_pid else 0.0
        left0, started = client.llen("bench_noop"), time.monotonic()
        wait_for(lambda: client.llen("bench_noop") == 0, "the no-op tasks", 120)
        elapsed = time.monotonic() - started
        done = left0
        worker_cpu = sum(proc_cpu(pid) - cpu_w0.get(pid, 0.0) for pid in descendants(worker.pid, children_map()))
        redis_cpu = (proc_cpu(redis_pid) - redis1) if redis_pid else 0.0
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
    per_task = publish_cpu / tasks + (worker_cpu + redis_cpu) / max(done, 1)
    return done / elapsed, per_task


def measure_creates(stack: Stack, key: str, meter_factory, seconds: float = 6.0) -> tuple[float, float]:
    """(creates/s, CPU seconds per create of client + web + PostgreSQL + Redis), 8 keep-alive clients, nothing
    consuming the charges (the dispatcher is stopped)."""
    stop_at = time.monotonic() + seconds
    counts = [0]
    lock = threading.Lock()

    def client() -> None:
        payer = Payer(stack.web_port, stack.sim_port, key, "", Outcomes())
        n = 0
        while time.monotonic() < stop_at:
            code, _ = payer.api("POST", "/orders", {"merchant_order_no": uuid.uuid4().hex, "amount": 100,
                                                    "currency": "CNY", "channel": "sandbox"})
            n += code == 201
        with lock:
            counts[0] += n

    meter = meter_factory()
    meter.start()
    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    cpu, _, _ = meter.stop()
    used = sum(cpu.get(name, 0.0) for name in ("web", "postgres", "redis", "loadgen"))
    return counts[0] / elapsed, used / max(counts[0], 1)


# -- main ---------------------------------------------------------------------------------------------------


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    (workdir / "metrics").mkdir()
    web_port, sim_port = free_port(), free_port()
    outcomes = Outcomes()
    receiver, receiver_port = start_receiver(outcomes)
    receiver_url = f"http://127.0.0.1:{receiver_port}/hooks"
    env = sh_env(dict(
        os.environ,
        ENV_FILE="", DEBUG="0", SECRET_KEY="bench-only-secret-key-" + "x" * 40, LOG_FORMAT="json",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{DB_NAME}", REDIS_URL=REDIS_URL,
        WEB_PORT=str(web_port), PUBLIC_BASE_URL=f"http://127.0.0.1:{web_port}",
        SANDBOX_API_BASE=f"http://127.0.0.1:{sim_port}", SANDBOX_MERCHANT_ID="sbx_m_bench",
        SANDBOX_SECRET="bench-sandbox-secret", WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
        PROMETHEUS_MULTIPROC_DIR=str(workdir / "metrics"), PYTHONUNBUFFERED="1",
    ))
    uptime = Path("/proc/loadavg").read_text().split()[:3]
    print(f"machine cores={CORES} loadavg_before={' '.join(uptime)} orders={ORDERS} concurrency={CONCURRENCY} "
          f"latency_ms={LATENCY_MS} rounds={ROUNDS} db={DB_NAME} redis={REDIS_URL} logs={workdir}")
    print("procfile " + " | ".join(f"{name}: {procfile()[name]}" for name in STACK if name in procfile()))
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
    prepare_database(env)
    key = create_merchant(env)
    stack = Stack(workdir, env, web_port, sim_port)
    pg_pids, pg_conn = pg_backends(DB_NAME)
    redis_pid = redis_server_pid(REDIS_URL)
    results: dict[str, list[dict[str, float]]] = {"zero": [], "latency": []}
    try:
        stack.start([name for name in STACK if name in procfile()])
        wait_for(lambda: http_status(web_port, "GET", "/healthz") == 200, "web", stack=stack)
        wait_for(lambda: http_status(sim_port, "POST", "/_sim/reset") == 200, "the simulator", stack=stack)
        wait_for(lambda: "listening on payments_tasks" in (workdir / "dispatcher.log").read_text(), "the dispatcher",
                 stack=stack)
        wait_for(lambda: all("ready" in (workdir / f"{n}.log").read_text() for n in ("worker", "webhooks")),
                 "the workers", stack=stack)
        if WARMUP:
            warm = drive(WARMUP, min(CONCURRENCY, 32), web_port, sim_port, key, receiver_url, outcomes)
            print(f"[warmup] paid={warm.paid} of {WARMUP}")
        # A deployment's tables have statistics; a new database's say "empty", and plans made then (prepared
        # statements keep theirs) may scan a whole index for one row. ANALYZE invalidates them.
        pg_conn.execute("ANALYZE")
        configs = [("zero", 0), ("latency", LATENCY_MS)]
        if ONLY:
            configs = [c for c in configs if c[0] == ONLY]
        for round_ in range(ROUNDS):
            for label, latency in configs:
                stack.check_alive()
                set_latency(sim_port, latency)
                load = Path("/proc/loadavg").read_text().split()[0]
                meter = Meter(stack, pg_pids, redis_pid)
                profilers = start_profilers(stack) if label == "zero" and round_ == 0 else []
                meter.start()
                result = drive(ORDERS, CONCURRENCY, web_port, sim_port, key, receiver_url, outcomes)
                cpu, wall, busy = meter.stop()
                for profiler in profilers:
                    profiler.wait()
                name = f"{label} {latency}ms round {round_ + 1} load1={load}"
                results[label].append(report(name, result, cpu, wall, busy))
        set_latency(sim_port, 0)
        ceiling = None
        if not os.environ.get("BENCH_NO_CEILING"):
            stack.stop(["dispatcher", "beat"])  # creates below stay unpublished: only their own cost counts
            creates_per_s, create_cpu = measure_creates(stack, key, lambda: Meter(stack, pg_pids, redis_pid))
            stack.stop()
            noop_per_s, task_cpu = measure_noop_tasks(workdir, redis_pid)
            # The simulator and the load generator share the cores: their CPU per paid order, as measured in the
            # zero-latency runs, is part of what a payment costs this machine.
            sides = statistics.median(r["sim_loadgen_cpu_ms_per_paid"] for r in results["zero"] or [{
                "sim_loadgen_cpu_ms_per_paid": 0.0}]) / 1000
            per_payment = CEILING_TASKS * task_cpu + CEILING_REQUESTS * create_cpu + sides
            ceiling = CORES / per_payment
            print(f"[ceiling] noop_tasks_per_s={noop_per_s:.0f} task_cpu_ms={1000 * task_cpu:.2f} "
                  f"creates_per_s={creates_per_s:.0f} create_cpu_ms={1000 * create_cpu:.2f} "
                  f"simulator_and_loadgen_cpu_ms={1000 * sides:.2f} "
                  f"model={CEILING_TASKS}_tasks+{CEILING_REQUESTS}_requests+simulator+loadgen "
                  f"ceiling_paid_per_s={ceiling:.0f} "
                  f"(with a 4th task, order.pending's webhook: {CORES / (per_payment + task_cpu):.0f})")
    finally:
        stack.stop()
        receiver.shutdown()
        pg_conn.close()
    print("summary:")
    for label, runs in results.items():
        if not runs:
            continue
        for metric in ("paid_per_s", "p50_s", "p99_s", "cores_busy_ours", "cores_busy_machine",
                       "project_cpu_ms_per_paid"):
            values = [run[metric] for run in runs]
            spread = f" (min {min(values):.2f}, max {max(values):.2f})" if len(values) > 1 else ""
            print(f"  {label}_{metric}={statistics.median(values):.2f}{spread}")
    if results["zero"] and results["latency"]:
        ratio = statistics.median(r["paid_per_s"] for r in results["latency"]) / statistics.median(
            r["paid_per_s"] for r in results["zero"])
        print(f"  latency_to_zero_ratio={ratio:.2f} (target >= 0.8)")
    if results["zero"] and ceiling:
        zero = statistics.median(r["paid_per_s"] for r in results["zero"])
        print(f"  pipeline_to_ceiling_ratio={zero / ceiling:.2f}")
    print(f"loadavg_after={' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if not os.environ.get("BENCH_KEEP"):
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
