"""Fault drills on the real stack (`make chaos`; issue 12): one table row per scenario, non-zero exit on any loss.

The harness starts everything itself, isolated from whatever else runs on the machine: a PostgreSQL cluster of its
own (initdb in a temporary directory, on a free port), a Redis of its own (broker, cache, breakers), the sandbox
simulator, gunicorn, two prefork workers for charges/callbacks/refunds, a threads worker for webhooks, beat and the
dispatcher, all with short sweep intervals and retry delays so that recovery is quick. Then, per scenario, it acts as
merchants and payers: creates orders through the API (Idempotency-Key, retried as API.md allows), pays them at the
simulator's payer page, closes some, refunds a share (some twice, partially), and receives the merchant webhooks,
while a fault is injected. After the load it waits for the recovery window and accounts for every order:

- succeeded: paid (refunded or not), everything final; failed as expected: closed or failed with a code;
- explained: flagged for ops with an attention reason the README documents (retries exhausted, late payment, amount
  mismatch); these are neither lost nor stuck;
- lost: accepted by the API (201) but not in the database, or in a state that disagrees with the channel's ledger
  (paid at the channel and not here, or paid here and not there; a refund here the channel does not have);
- double-charged: per the simulator's `/_sim/trades/<out_trade_no>`, a trade not unique, a refund at the channel that
  is not exactly one of ours, more refunded than paid, or one merchant refund number with two refunds here;
- stuck: still created/pending (or a refund pending/processing) after the recovery window, and not flagged;
- webhooks missing: an event the database has that the receiver never got (verified), or a final state without its
  event; doubled: one change (object, type) received as two different events, or one event id with two bodies;
- recover s: from the end of the fault until every order, refund and webhook delivery that existed then is settled
  (final, or flagged for ops); "never" if that did not happen within the recovery window.

    python bench/chaos.py                   # the full run: >= 1,000 orders per scenario, every scenario
    python bench/chaos.py --short           # make test's version: 40 orders, the scenarios that restart nothing
    python bench/chaos.py --orders 200 --scenarios 1,4 --output bench/results/x.txt
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from standardwebhooks import Webhook, WebhookVerificationError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from channels.sandbox.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_message  # noqa: E402

PY = sys.executable
SANDBOX_MERCHANT_ID = "sbx_m_chaos"
SANDBOX_SECRET = "chaos-sandbox-secret"
PAID = ("succeeded", "partially_refunded", "refunded")
OPEN_ORDER = ("created", "pending")
OPEN_REFUND = ("pending", "processing")
# Attention reasons README "Operations" documents: what automatic handling gave up on, for ops to decide.
EXPLAINED_PREFIXES = ("charge_order_exhausted", "refund_order_exhausted", "paid_after_", "channel_amount_mismatch",
                      "late_payment_refunding")


# Set on Ctrl-C or SIGTERM: the merchants' loops stop at once, so that the stack is cleaned up without waiting.
STOP = threading.Event()


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], *, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            result = check()
            if result:
                return result
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout_s}s waiting for {what}")


class Gate:
    """A TCP proxy between the product and the simulator's API: ``close()`` makes the channel refuse connections
    (nothing listens on its port, and open connections are reset), ``open()`` lets them through again. The
    payers and the harness talk to the simulator directly."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.conns: set[socket.socket] = set()
        self.open()

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(256)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        with self.lock:
            listener, self.listener = self.listener, None
            conns, self.conns = self.conns, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()  # linger 0: a reset, as a peer that went away

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()
            with self.lock:
                self.conns.discard(source)
                self.conns.discard(sink)


# -- the stack ---------------------------------------------------------------------------------------------------


class Stack:
    """Every process of the deployment, on a PostgreSQL and a Redis of the harness's own."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir()
        self.pg_dir = workdir / "pg"
        self.pg_port = free_port()
        self.redis_port = free_port()
        self.web_port = free_port()
        self.sim_port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.gate = Gate(self.sim_port)
        self.restarts = 0  # processes that exited by themselves and were started again
        self.commands: dict[str, tuple[list[str], dict[str, str]]] = {}  # how to start each one again
        # Held while a process is restarted on purpose (restart) and while check_alive looks: the recovery loop's
        # check_alive once found a worker the fault thread had just killed and started it too, and the fault thread's
        # own start then left the first copy running, unknown to stop(), after the drill.
        self.restart_lock = threading.Lock()
        self.redis_proc: subprocess.Popen | None = None
        self.pg_started = False
        self.database_url = f"postgres://postgres@127.0.0.1:{self.pg_port}/payments_chaos"
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/4"
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DATABASE_", "REDIS_"))},
            "ENV_FILE": "", "DEBUG": "0", "SECRET_KEY": "chaos-only-secret-key-" + "x" * 40,
            "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
            "PUBLIC_BASE_URL": self.web_url, "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SANDBOX_API_BASE": f"http://127.0.0.1:{self.gate.port}", "SANDBOX_MERCHANT_ID": SANDBOX_MERCHANT_ID,
            "SANDBOX_SECRET": SANDBOX_SECRET,
            # Quick recovery: sweeps every 2 s that pick up work untouched for a few seconds, short retries.
            "SWEEP_INTERVAL_S": "2", "SWEEP_CREATED_AFTER_S": "8", "SWEEP_PENDING_QUERY_AFTER_S": "8",
            "SWEEP_REFUND_AFTER_S": "6", "SWEEP_NOTIFICATION_AFTER_S": "5",
            "TASK_RETRY_BACKOFF_S": "1", "TASK_RETRY_BACKOFF_MAX_S": "4", "TASK_MAX_RETRIES": "10",
            "CHANNEL_CONNECT_TIMEOUT_S": "1", "CHANNEL_READ_TIMEOUT_S": "2", "CHANNEL_BREAKER_OPEN_S": "2",
            "WEBHOOK_ALLOWED_HOSTS": "localhost,127.0.0.0/8,::1", "WEBHOOK_TIMEOUT_S": "3",
            "WEBHOOK_RETRY_SCHEDULE_S": "1,1,2,2,3,5,5,5,10,10,10,10", "WEBHOOK_SWEEP_INTERVAL_S": "1",
            "WEBHOOK_SWEEP_FIRST_ATTEMPT_AFTER_S": "10",
            "WEBHOOK_SWEEP_REQUEUE_S": "15",
            "DEFAULT_RATE_LIMIT_PER_S": "1000", "DB_CONN_MAX_AGE": "60", "LOG_SAMPLE_RATE": "0.05",
            "PYTHONUNBUFFERED": "1",
        }

    # PostgreSQL: initdb refuses root, so as root the cluster belongs to the postgres user.
    def _pg(self, *args: str) -> list[str]:
        return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + list(args)

    def _pg_bin(self, name: str) -> str:
        found = shutil.which(name)
        if found:
            return found
        candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        if not candidates:
            raise RuntimeError(f"{name} not found (PostgreSQL server binaries)")
        return str(candidates[-1])

    def pg_start(self) -> None:
        if not self.pg_dir.exists():
            self.pg_dir.mkdir(mode=0o700)
            if os.geteuid() == 0:
                shutil.chown(self.pg_dir, "postgres", "postgres")
            subprocess.run(self._pg(self._pg_bin("initdb"), "-D", str(self.pg_dir), "-U", "postgres", "-A", "trust",
                                    "--no-sync"), check=True, capture_output=True)
        # fsync off: a harness's throwaway cluster on a shared machine; every restart here is a clean shutdown.
        options = (f"-p {self.pg_port} -k {self.pg_dir} -c listen_addresses=127.0.0.1 -c max_connections=300 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        subprocess.run(self._pg(self._pg_bin("pg_ctl"), "-D", str(self.pg_dir), "-o", options, "-l",
                                str(self.pg_dir / "server.log"), "-w", "start"),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pg_started = True

    def pg_restart(self) -> None:
        # The new server inherits pg_ctl's output: a file, never a pipe that this call would wait on forever.
        subprocess.run(self._pg(self._pg_bin("pg_ctl"), "-D", str(self.pg_dir), "-m", "fast", "-w", "-l",
                                str(self.pg_dir / "server.log"), "restart"),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def pg_stop(self) -> None:
        if self.pg_started:
            subprocess.run(self._pg(self._pg_bin("pg_ctl"), "-D", str(self.pg_dir), "-m", "immediate", "-w",
                                    "stop"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            self.pg_started = False

    def redis_start(self) -> None:
        self.redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=(self.logs / "redis.log").open("a"), stderr=subprocess.STDOUT,
        )
        wait_for(lambda: redis.Redis(port=self.redis_port).ping(), timeout_s=10, what="redis")

    def redis_stop(self) -> None:
        if self.redis_proc is not None:
            self.redis_proc.kill()  # as a crash would: nothing saved (--save '')
            self.redis_proc.wait()
            self.redis_proc = None

    def spawn(self, name: str, args: list[str], **env: str) -> subprocess.Popen:
        if name != "sim":  # the simulator keeps the channel's ledger in memory: it is never restarted
            self.commands[name] = (args, env)
        proc = subprocess.Popen(args, cwd=ROOT, env={**self.env, **env},
                                stdout=(self.logs / f"{name}.log").open("a"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_worker(self, name: str) -> None:
        self.spawn(name, [PY, "-m", "celery", "-A", "payments_site", "worker", "-n", f"{name}@chaos", "-c", "3",
                          "-Q", "charges,callbacks,refunds,reconciliation", "--without-gossip", "--without-mingle",
                          "-l", "INFO"], SERVICE="worker")

    def start(self) -> None:
        log(f"stack in {self.dir}: postgres :{self.pg_port}, redis :{self.redis_port}, web :{self.web_port}")
        t0 = time.monotonic()
        self.pg_start()
        self.redis_start()
        log(f"  postgres and redis up in {time.monotonic() - t0:.1f}s")
        subprocess.run([PY, "-m", "payments_site.createdb"], cwd=ROOT, env=self.env, check=True, capture_output=True)
        self.manage("migrate", "--noinput")
        log(f"  migrated in {time.monotonic() - t0:.1f}s")
        self.spawn("sim", [PY, "manage.py", "run_simulator", "sandbox", "--port", str(self.sim_port)])
        self.spawn("web", [PY, "-m", "gunicorn", "payments_site.wsgi", "-c", "payments_site/gunicorn.conf.py",
                           "--bind", f"127.0.0.1:{self.web_port}", "--workers", "2", "--threads", "4"],
                   SERVICE="web")
        for name in ("worker1", "worker2"):
            self.start_worker(name)
        self.spawn("webhooks", [PY, "-m", "celery", "-A", "payments_site", "worker", "-n", "webhooks@chaos",
                                "-P", "threads", "-c", "10", "-Q", "webhooks", "--without-gossip",
                                "--without-mingle", "-l", "INFO"], SERVICE="worker")
        self.spawn("beat", [PY, "-m", "celery", "-A", "payments_site", "beat", "-l", "INFO",
                            "-s", str(self.dir / "beat-schedule")], SERVICE="beat")
        self.spawn("dispatcher", [PY, "manage.py", "run_dispatcher"], SERVICE="dispatcher")
        wait_for(lambda: httpx.post(f"{self.sim_url}/_sim/reset").status_code == 200, timeout_s=30, what="simulator")
        wait_for(lambda: httpx.get(f"{self.web_url}/healthz").status_code == 200, timeout_s=30, what="web")
        wait_for(lambda: "listening on payments_tasks" in (self.logs / "dispatcher.log").read_text(),
                 timeout_s=30, what="dispatcher")
        log(f"  web, simulator and dispatcher up in {time.monotonic() - t0:.1f}s")
        # Both charge workers answer a ping (their logs are sampled, so no log line is sure to be there).
        ping = [PY, "-m", "celery", "-A", "payments_site", "inspect", "ping", "-t", "2",
                "-d", "worker1@chaos,worker2@chaos,webhooks@chaos"]
        wait_for(lambda: subprocess.run(ping, cwd=ROOT, env=self.env, capture_output=True, text=True)
                 .stdout.count("pong") == 3, timeout_s=90, what="the workers")
        log(f"  workers up in {time.monotonic() - t0:.1f}s")
        self.check_alive()

    def check_alive(self) -> None:
        with self.restart_lock:
            self._restart_exited()

    def _restart_exited(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                continue
            if name in self.commands:
                # As a supervisor would (compose's restart policy). A worker whose pool children are killed while
                # it starts them gives up ("Could not start worker processes": scenario 1 does that on purpose), and
                # Celery workers exit on an AttributeError in their reconnect when Redis goes (scenario 3).
                log(f"  {name} exited ({proc.returncode}); restarted")
                self.restarts += 1
                args, env = self.commands[name]
                self.spawn(name, args, **env)
                continue
            raise RuntimeError(f"{name} exited ({proc.returncode}); see {self.logs / name}.log")

    def create_merchants(self, names: list[str]) -> dict[str, dict[str, str]]:
        """One merchant per scenario, made at once (each manage.py costs seconds of start-up on a busy machine)."""
        script = (
            "import json; from payments import services; out = {}\n"
            f"for name in {names!r}:\n"
            "    m, key = services.merchant_create(name=name, live=False)\n"
            "    out[name] = {'merchant_id': m.public_id, 'secret_key': key, 'webhook_secret': m.webhook_secret}\n"
            "print('MERCHANTS=' + json.dumps(out))"
        )
        out = self.manage("shell", "-c", script)
        return json.loads(out.split("MERCHANTS=", 1)[1])

    def manage(self, *args: str) -> str:
        done = subprocess.run([PY, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout

    @staticmethod
    def children(pid: int) -> list[int]:
        try:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def restart(self, name: str, *, down_s: float = 1.0) -> None:
        """Kill a process and its children, and start it again ``down_s`` later, as a supervisor would."""
        with self.restart_lock:
            self.kill_tree(name)
            time.sleep(down_s)
            args, env = self.commands[name]
            self.spawn(name, args, **env)

    def kill_tree(self, name: str) -> None:
        """SIGKILL a process and its children, as a supervisor's control group kill would."""
        proc = self.procs[name]
        kids = self.children(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        for kid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.redis_stop()
        self.pg_stop()


# -- the merchant's webhook receiver -----------------------------------------------------------------------------


class Receiver:
    """Records every verified webhook: event id → (type, object id, body); answers 503 while ``down``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.down = threading.Event()
        self.secrets: dict[str, Webhook] = {}  # path → the merchant's verifier
        self.events: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))  # path → id → bodies
        self.unverified = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = 503 if receiver.down.is_set() else receiver.record(self.path, dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def record(self, path: str, headers: dict[str, str], body: bytes) -> int:
        verifier = self.secrets.get(path)
        try:
            assert verifier is not None
            verifier.verify(body, {k.lower(): v for k, v in headers.items()})
        except (AssertionError, WebhookVerificationError):
            with self.lock:
                self.unverified += 1
            return 400
        payload = json.loads(body)
        obj = payload["data"]["object"]
        with self.lock:
            self.events[path][payload["id"]].add((payload["type"], obj["id"], obj.get("updated_at") or ""))
        return 200

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- merchants and payers ----------------------------------------------------------------------------------------


@dataclass
class Planned:
    merchant_order_no: str
    amount: int
    fate: str  # pay | close
    refunds: list[int] = field(default_factory=list)  # amounts to refund once paid
    forge: bool = False  # post forged notifications for it first (scenario 9)
    order_id: str = ""
    accepted: bool = False
    refund_nos: dict[str, int] = field(default_factory=dict)  # merchant_refund_no → amount, accepted
    note: str = ""


class Merchant:
    """One merchant of one scenario, driving its orders through the API like a careful integration would."""

    def __init__(self, stack: Stack, receiver: Receiver, name: str, secrets: dict[str, str], deadline_s: float) -> None:
        self.key = secrets["secret_key"]
        self.merchant_public_id = secrets["merchant_id"]
        self.hook_path = f"/hooks/{name}"
        receiver.secrets[self.hook_path] = Webhook(secrets["webhook_secret"])
        self.notify_url = receiver.base_url + self.hook_path
        self.stack = stack
        self.deadline_s = deadline_s
        self.api = httpx.Client(base_url=stack.web_url + "/api/v1", timeout=15,
                                headers={"Authorization": f"Bearer {self.key}"},
                                limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
        self.payer = httpx.Client(timeout=15)
        self.accepted = 0

    def post(self, path: str, body: dict, until: float) -> httpx.Response | None:
        """POST with one Idempotency-Key, retried as API.md says is safe (5xx, 409 in flight, 429, no answer)."""
        key = uuid.uuid4().hex
        while time.monotonic() < until and not STOP.is_set():
            try:
                response = self.api.post(path, json=body, headers={"Idempotency-Key": key})
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            code = response.json().get("error", {}).get("code") if response.status_code >= 400 else None
            if response.status_code >= 500 or response.status_code == 429 or code == "idempotency_key_in_flight":
                time.sleep(0.5)
                continue
            return response
        return None

    def get_order(self, order_id: str) -> dict | None:
        try:
            response = self.api.get(f"/orders/{order_id}")
        except httpx.TransportError:
            return None
        return response.json() if response.status_code == 200 else None

    def wait_status(self, order_id: str, wanted: tuple[str, ...], until: float) -> dict | None:
        while time.monotonic() < until and not STOP.is_set():
            order = self.get_order(order_id)
            if order is not None and order["status"] in wanted:
                return order
            time.sleep(0.4)
        return None

    def drive(self, plan: Planned, forge: Callable[[Planned], None] | None) -> None:
        until = time.monotonic() + self.deadline_s
        body = {"merchant_order_no": plan.merchant_order_no, "amount": plan.amount, "currency": "CNY",
                "channel": "sandbox", "notify_url": self.notify_url, "description": "chaos"}
        response = self.post("/orders", body, until)
        if response is None or response.status_code not in (200, 201):
            plan.note = f"create not accepted ({response.status_code if response is not None else 'no answer'})"
            return
        plan.order_id, plan.accepted = response.json()["id"], True
        self.accepted += 1
        if plan.forge and forge is not None:
            forge(plan)
        order = self.wait_status(plan.order_id, ("pending", "failed", "closed", *PAID), until)
        if order is None or order["status"] != "pending":
            return  # never payable in time (or failed): the accounting says what became of it
        if plan.fate == "close":
            self.post(f"/orders/{plan.order_id}/close", {}, until)
            return
        while time.monotonic() < until and not STOP.is_set():
            try:
                self.payer.post(order["pay_url"], data={"action": "pay"})
                break
            except httpx.TransportError:
                time.sleep(0.5)
        if not plan.refunds:
            return
        if self.wait_status(plan.order_id, PAID, until) is None:
            return
        for n, amount in enumerate(plan.refunds):
            refund_no = f"{plan.merchant_order_no}-R{n}"
            response = self.post(f"/orders/{plan.order_id}/refunds",
                                 {"merchant_refund_no": refund_no, "amount": amount}, until)
            if response is not None and response.status_code in (200, 201):
                plan.refund_nos[refund_no] = amount


def plan_orders(tag: str, count: int, rng: random.Random, forge_share: float = 0.0) -> list[Planned]:
    plans = []
    for i in range(count):
        amount = rng.randint(100, 100_000)
        fate = "close" if rng.random() < 0.08 else "pay"
        refunds: list[int] = []
        if fate == "pay" and rng.random() < 0.3:
            kind = rng.random()
            refunds = [amount] if kind < 0.4 else [amount // 2] if kind < 0.7 else [amount // 3, amount // 3]
        plans.append(Planned(f"{tag}-{i}", amount, fate, refunds, forge=rng.random() < forge_share))
    return plans


# -- accounting --------------------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    orders: int = 0
    succeeded: int = 0
    failed_expected: int = 0
    explained: int = 0
    lost: int = 0
    double: int = 0
    stuck: int = 0
    hooks_missing: int = 0
    hooks_doubled: int = 0
    recover_s: float | None = None
    notes: list[str] = field(default_factory=list)

    def bad(self) -> bool:
        return self.lost > 0 or self.double > 0 or self.stuck > 0


def query(stack: Stack, sql: str, params: tuple) -> list[tuple]:
    """A query on the harness's own connection, retried while PostgreSQL restarts."""
    for attempt in range(60):
        try:
            with psycopg.connect(stack.database_url, connect_timeout=3) as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.OperationalError:
            if attempt == 59:
                raise
            time.sleep(0.5)
    return []


def unsettled(stack: Stack, merchant: Merchant, before: dt.datetime | None = None) -> int:
    """Open orders, refunds and webhook deliveries of the merchant that nothing flagged for ops (those made before
    ``before`` only, when given)."""
    until = before or dt.datetime.max.replace(tzinfo=dt.UTC)
    (count,) = query(stack, """
        SELECT (SELECT count(*) FROM payments_order o JOIN payments_merchant m ON m.id = o.merchant_id
                 WHERE m.public_id = %s AND o.status IN ('created', 'pending') AND o.attention = ''
                   AND o.created_at <= %s)
             + (SELECT count(*) FROM payments_refund r JOIN payments_order o ON o.id = r.order_id
                  JOIN payments_merchant m ON m.id = o.merchant_id
                 WHERE m.public_id = %s AND r.status IN ('pending', 'processing') AND r.attention = ''
                   AND r.created_at <= %s)
             + (SELECT count(*) FROM payments_webhookdelivery d JOIN payments_event e ON e.id = d.event_id
                  JOIN payments_merchant m ON m.id = e.merchant_id WHERE m.public_id = %s AND d.state = 'pending'
                   AND e.created_at <= %s)
    """, (merchant.merchant_public_id, until) * 3)[0]
    return int(count)


def account(stack: Stack, merchant: Merchant, receiver: Receiver, plans: list[Planned], row: Row) -> None:
    mid = (merchant.merchant_public_id,)
    orders = {r[0]: r for r in query(stack, """
        SELECT o.public_id, o.status, o.attention, o.failure_code, o.amount, o.amount_refunded, o.merchant_order_no
          FROM payments_order o JOIN payments_merchant m ON m.id = o.merchant_id WHERE m.public_id = %s""", mid)}
    refunds: dict[str, list[tuple]] = defaultdict(list)
    for r in query(stack, """
        SELECT o.public_id, r.public_id, r.merchant_refund_no, r.status, r.amount, r.attention
          FROM payments_refund r JOIN payments_order o ON o.id = r.order_id
          JOIN payments_merchant m ON m.id = o.merchant_id WHERE m.public_id = %s""", mid):
        refunds[r[0]].append(r)
    events = query(stack, """
        SELECT e.public_id, e.type, coalesce(r.public_id, o.public_id)
          FROM payments_event e LEFT JOIN payments_order o ON o.id = e.order_id
          LEFT JOIN payments_refund r ON r.id = e.refund_id
          JOIN payments_merchant m ON m.id = e.merchant_id WHERE m.public_id = %s""", mid)
    sim = httpx.Client(base_url=stack.sim_url, timeout=10)
    by_no = {o[6]: o for o in orders.values()}
    examples: dict[str, list[str]] = defaultdict(list)

    def count(kind: str, what: str) -> None:
        setattr(row, kind, getattr(row, kind) + 1)
        if len(examples[kind]) < 3:
            examples[kind].append(what)

    for plan in plans:
        if not plan.accepted:
            continue
        row.orders += 1
        order = by_no.get(plan.merchant_order_no)
        if order is None or order[0] != plan.order_id:
            count("lost", f"{plan.order_id}: accepted, not in the database")
            continue
        public_id, status, attention, failure_code, amount, refunded, _ = order
        ours = refunds.get(public_id, [])
        trade_response = sim.get(f"/_sim/trades/{public_id}")
        trade: dict[str, Any] | None = trade_response.json() if trade_response.status_code == 200 else None
        # Double charge: the channel's ledger per out_trade_no and per refund.
        sim_refunds = trade["refunds"] if trade else []
        our_ids = {r[1] for r in ours}
        sim_ids = [r["out_refund_no"] for r in sim_refunds]
        sim_refunded = sum(r["amount"] for r in sim_refunds if r["status"] == "SUCCEEDED")
        per_no: dict[str, int] = defaultdict(int)
        for r in ours:
            per_no[r[2]] += 1
        if (len(sim_ids) != len(set(sim_ids)) or set(sim_ids) - our_ids or (trade and sim_refunded > trade["amount"])
                or any(n > 1 for n in per_no.values())):
            count("double", f"{public_id}: channel refunds {sim_ids}, ours {sorted(our_ids)}")
            continue
        channel_paid = trade is not None and trade["status"] == "SUCCEEDED"
        flagged = bool(attention) or any(r[5] for r in ours)
        if flagged and not attention.startswith(EXPLAINED_PREFIXES) and not all(
                r[5].startswith(EXPLAINED_PREFIXES) for r in ours if r[5]):
            count("lost", f"{public_id}: flagged {attention!r}, not a documented reason")
            continue
        if status in OPEN_ORDER or any(r[3] in OPEN_REFUND for r in ours):
            if flagged:
                row.explained += 1
            else:
                count("stuck", f"{public_id}: {status}, refunds {[r[3] for r in ours]}")
            continue
        # Final here: it must agree with the channel's ledger.
        our_refunds_ok = sum(r[4] for r in ours if r[3] == "succeeded")
        if status in PAID:
            if not channel_paid or our_refunds_ok != sim_refunded or refunded != sim_refunded:
                count("lost", f"{public_id}: {status} refunded {refunded}; channel {trade and trade['status']} "
                              f"refunded {sim_refunded}")
                continue
            row.succeeded += 1
        elif status in ("closed", "failed"):
            if channel_paid and not flagged:
                count("lost", f"{public_id}: {status} here, paid at the channel, not flagged")
                continue
            if status == "failed" and not failure_code:
                count("lost", f"{public_id}: failed without a code")
                continue
            if flagged:
                row.explained += 1
            else:
                row.failed_expected += 1
        else:
            count("lost", f"{public_id}: status {status}")
            continue
        for refund_no in plan.refund_nos:
            if refund_no not in per_no:
                count("lost", f"{public_id}: refund {refund_no} accepted, not in the database")
                break
    outcomes = Counter(f"{o[1]}{':' + (o[2] or o[3]) if (o[2] or o[3]) else ''}" for o in orders.values()
                       if o[1] not in PAID or o[2])
    if outcomes:
        row.notes.append("not paid or flagged: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    if receiver.unverified:
        row.notes.append(f"{receiver.unverified} webhook posts failed verification so far")
    # Webhooks: every event the database has, received and verified; one event per change.
    got = receiver.events.get(merchant.hook_path, {})
    for event_id, event_type, object_id in events:
        if event_id not in got:
            count("hooks_missing", f"{event_type} {object_id} ({event_id})")
    final_event = {"succeeded": "order.succeeded", "partially_refunded": "order.succeeded",
                   "refunded": "order.succeeded", "closed": "order.closed", "failed": "order.failed"}
    have = {(t, o) for _, t, o in events}
    for public_id, status, attention, *_ in orders.values():
        wanted = final_event.get(status)
        if wanted and (wanted, public_id) not in have and not attention:
            count("hooks_missing", f"{wanted} {public_id}: no event")
        for r in refunds.get(public_id, []):
            if r[3] in ("succeeded", "failed") and (f"refund.{r[3]}", r[1]) not in have:
                count("hooks_missing", f"refund.{r[3]} {r[1]}: no event")
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for event_id, bodies in got.items():
        if len({(t, o) for t, o, _ in bodies}) > 1:
            count("hooks_doubled", f"{event_id} delivered as {sorted(bodies)}")
        for t, o, _ in bodies:
            seen[(t, o)].add(event_id)
    for (t, o), ids in seen.items():
        if len(ids) > 1:
            count("hooks_doubled", f"{t} {o} as {len(ids)} events")
    for kind, lines in examples.items():
        row.notes.extend(f"{kind}: {line}" for line in lines)


# -- scenarios ---------------------------------------------------------------------------------------------------


class Drill:
    """One scenario's run: merchants drive orders while ``fault`` runs; then the recovery window and the count."""

    def __init__(self, stack: Stack, receiver: Receiver, args: argparse.Namespace) -> None:
        self.stack = stack
        self.receiver = receiver
        self.args = args
        self.sim = httpx.Client(base_url=stack.sim_url, timeout=10)
        self.done = threading.Event()  # the drivers are finished
        self.merchant: Merchant | None = None
        self.run_id = uuid.uuid4().hex[:6]
        self.merchant_secrets: dict[str, dict[str, str]] = {}

    def arm(self, operation: str, mode: str, count: int | None = None) -> None:
        body: dict[str, Any] = {"operation": operation, "mode": mode}
        if count is not None:
            body["count"] = count
        self.sim.post("/_sim/faults", json=body).raise_for_status()

    def clear(self) -> None:
        self.sim.delete("/_sim/faults").raise_for_status()

    def progress(self, share: float) -> None:
        """Wait until ``share`` of the scenario's orders were accepted (or the drivers are done)."""
        assert self.merchant is not None
        target = share * self.args.orders
        while self.merchant.accepted < target and not self.done.is_set():
            time.sleep(0.1)

    def run(self, number: int, name: str, fault: Callable[[Drill], None], forge_share: float = 0.0) -> Row:
        row = Row(f"{number}. {name}")
        rng = random.Random(number)
        self.clear()
        self.sim.post("/_sim/clock", json={"speed": 30}).raise_for_status()
        client = redis.Redis(port=self.stack.redis_port, db=4)
        with contextlib.suppress(redis.RedisError):
            keys = list(client.scan_iter("breaker:*"))
            if keys:
                client.delete(*keys)
        tag = f"s{number}-{self.run_id}"
        self.merchant = merchant = Merchant(self.stack, self.receiver, tag, self.merchant_secrets[tag],
                                            self.args.driver_deadline_s)
        plans = plan_orders(tag, self.args.orders, rng, forge_share)
        log(f"scenario {row.scenario}: {len(plans)} orders")
        started = time.monotonic()
        restarts_before = self.stack.restarts
        fault_end: list[float] = []

        recovered_at: list[float] = []
        given_up = threading.Event()  # the recovery window is over

        def fault_thread() -> None:
            try:
                fault(self)
            except Exception as exc:  # a failed injection is a harness failure, reported in the notes
                row.notes.append(f"fault injection failed: {exc!r}")
            finally:
                fault_end.append(time.monotonic())
            # Time to recover: until everything that existed when the fault ended is settled (later work is the
            # load's, not the fault's).
            # It looks at least once: a fault that ends late (a worker being restarted) may end after the load's
            # own recovery wait has given up, with everything settled already.
            wall = dt.datetime.now(dt.UTC)
            deadline = time.monotonic() + self.args.driver_deadline_s + self.args.recovery_s
            while True:
                with contextlib.suppress(Exception):
                    if unsettled(self.stack, merchant, before=wall) == 0:
                        recovered_at.append(time.monotonic())
                        return
                if time.monotonic() >= deadline or given_up.is_set():
                    return
                time.sleep(1)

        injector = threading.Thread(target=fault_thread, daemon=True)
        injector.start()
        forge = self.forge if forge_share else None
        pool = ThreadPoolExecutor(self.args.concurrency)
        try:
            list(pool.map(lambda p: merchant.drive(p, forge), plans))
        finally:
            pool.shutdown(wait=not STOP.is_set(), cancel_futures=True)
        self.done.set()
        self.clear()
        log(f"  load done in {time.monotonic() - started:.0f}s ({merchant.accepted} accepted); recovering")
        fault_done = fault_end[0] if fault_end else time.monotonic()
        deadline = time.monotonic() + self.args.recovery_s
        while time.monotonic() < deadline:
            self.stack.check_alive()
            if unsettled(self.stack, merchant) == 0:
                break
            time.sleep(1)
        time.sleep(0.5)  # the monitor's last look
        given_up.set()
        injector.join()
        if recovered_at:
            row.recover_s = recovered_at[0] - fault_done
        time.sleep(0.5)  # the last webhook's answer reaches the receiver's records
        account(self.stack, merchant, self.receiver, plans, row)
        if self.stack.restarts > restarts_before:
            row.notes.append(f"{self.stack.restarts - restarts_before} processes exited by themselves and were "
                             "restarted, as a supervisor would")
        not_accepted = sum(1 for p in plans if not p.accepted)
        if not_accepted:
            row.notes.append(f"{not_accepted} creates never accepted by the API (the merchant gave up retrying)")
        self.done.clear()
        return row

    def forge(self, plan: Planned) -> None:
        """Notifications that must change nothing: unsigned, signed with the wrong secret, tampered amount."""
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        trade = {"object": "trade", "out_trade_no": plan.order_id, "trade_no": "sbx_t_forged", "status": "SUCCEEDED",
                 "amount": plan.amount, "currency": "CNY", "paid_at": now, "created_at": now}
        url = f"{self.stack.web_url}/callbacks/sandbox"
        ts = str(int(time.time()))
        for secret, amount in (("not-the-secret", plan.amount), (None, plan.amount), ("not-the-secret", 1)):
            body = json.dumps({"id": f"sbx_n_forged_{uuid.uuid4().hex[:12]}", "type": "trade.succeeded",
                               "created_at": now, "data": {**trade, "amount": amount}}).encode()
            headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: ts}
            if secret:
                headers[SIGNATURE_HEADER] = sign_message(secret, ts, body)
            with contextlib.suppress(httpx.TransportError):
                httpx.post(url, content=body, headers=headers, timeout=10)


def kill_workers(drill: Drill) -> None:
    """SIGKILL prefork children mid-task, and now and then a whole worker (restarted, as a supervisor would)."""
    rng = random.Random(1)
    drill.progress(0.05)
    kills = 0
    while not drill.done.is_set():
        time.sleep(rng.uniform(0.5, 1.5))
        drill.stack.check_alive()
        name = rng.choice(["worker1", "worker2"])
        if kills % 6 == 5:
            drill.stack.restart(name)
        else:
            kids = drill.stack.children(drill.stack.procs[name].pid)
            if kids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rng.choice(kids), signal.SIGKILL)
        kills += 1
    log(f"  {kills} kills, {drill.stack.restarts} processes restarted after exiting by themselves")


def flush_redis(drill: Drill) -> None:
    for share in (0.3, 0.6):
        drill.progress(share)
        redis.Redis(port=drill.stack.redis_port).flushall()


def restart_redis(drill: Drill) -> None:
    drill.progress(0.3)
    drill.stack.redis_stop()
    time.sleep(10)
    drill.stack.redis_start()


def restart_postgres(drill: Drill) -> None:
    for share in (0.3, 0.6):
        drill.progress(share)
        drill.stack.pg_restart()


def channel_refuses(drill: Drill) -> None:
    drill.progress(0.3)
    drill.stack.gate.close()
    time.sleep(drill.args.outage_s)
    drill.stack.gate.open()


def channel_5xx_and_rate_limits(drill: Drill) -> None:
    drill.progress(0.2)
    for mode in ("http_500", "rate_limit", "http_500", "rate_limit"):
        drill.arm("*", mode)
        time.sleep(drill.args.outage_s / 3)
        drill.clear()
        time.sleep(drill.args.outage_s / 6)


def channel_timeouts(drill: Drill) -> None:
    drill.progress(0.1)
    n = drill.args.orders
    drill.arm("create", "timeout_after_processing", max(3, n // 8))
    drill.arm("refund", "timeout_after_processing", max(2, n // 25))
    drill.progress(0.7)


def notifications_duplicated(drill: Drill) -> None:
    n = drill.args.orders
    drill.arm("notify", "duplicate_notify", max(3, n // 3))
    drill.arm("notify", "out_of_order_notify", max(3, n // 3))
    drill.arm("notify", "drop_notify", max(2, n // 20))
    drill.progress(0.9)


def notifications_forged(drill: Drill) -> None:
    n = drill.args.orders
    drill.arm("notify", "bad_signature_notify", max(3, n // 4))
    drill.arm("notify", "tamper_amount_notify", max(3, n // 4))
    drill.progress(0.9)


def receiver_down(drill: Drill) -> None:
    drill.progress(0.3)
    drill.receiver.down.set()
    time.sleep(drill.args.outage_s)
    drill.receiver.down.clear()


# number → (name, fault, restarts a service, share of orders sent forged notifications)
SCENARIOS: dict[int, tuple[str, Callable[[Drill], None], bool, float]] = {
    1: ("workers SIGKILLed mid-charge/refund", kill_workers, False, 0.0),
    2: ("Redis FLUSHALL with work queued", flush_redis, False, 0.0),
    3: ("Redis stopped 10 s", restart_redis, True, 0.0),
    4: ("PostgreSQL restarted under load", restart_postgres, True, 0.0),
    5: ("channel refuses connections", channel_refuses, False, 0.0),
    6: ("channel 5xx and rate limits", channel_5xx_and_rate_limits, False, 0.0),
    7: ("channel times out after processing", channel_timeouts, False, 0.0),
    8: ("notifications duplicated/out of order", notifications_duplicated, False, 0.0),
    9: ("forged and tampered notifications", notifications_forged, False, 0.2),
    10: ("merchant webhook receiver down", receiver_down, False, 0.0),
}

HEADER = (f"{'scenario':<42} {'orders':>6} {'succeeded':>9} {'failed ok':>9} {'explained':>9} {'lost':>4} "
          f"{'double':>6} {'stuck':>5} {'hooks missing':>13} {'hooks doubled':>13} {'recover s':>9}")


def format_row(row: Row) -> str:
    recover = f"{row.recover_s:.1f}" if row.recover_s is not None else "never"
    return (f"{row.scenario:<42} {row.orders:>6} {row.succeeded:>9} {row.failed_expected:>9} {row.explained:>9} "
            f"{row.lost:>4} {row.double:>6} {row.stuck:>5} {row.hooks_missing:>13} {row.hooks_doubled:>13} "
            f"{recover:>9}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="30 orders, only the scenarios that restart nothing")
    parser.add_argument("--orders", type=int)
    parser.add_argument("--scenarios", help="comma-separated numbers (default: all, or those --short allows)")
    parser.add_argument("--concurrency", type=int, help="merchant/payer threads (default 12; 15 with --short)")
    parser.add_argument("--recovery-s", type=float, help="the recovery window")
    parser.add_argument("--output", help="also write the table to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) even on success")
    args = parser.parse_args(argv)
    args.orders = args.orders or (30 if args.short else 1000)
    args.concurrency = args.concurrency or (15 if args.short else 12)
    args.recovery_s = args.recovery_s or (60 if args.short else 180)
    args.driver_deadline_s = 60 if args.short else 120
    args.outage_s = 4 if args.short else 12  # how long the channel or the webhook receiver stays down
    chosen = ([int(n) for n in args.scenarios.split(",")] if args.scenarios else
              [n for n, s in SCENARIOS.items() if not (args.short and s[2])])

    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    os.chmod(workdir, 0o755)  # the postgres user reaches its cluster's directory inside
    stack = Stack(workdir)
    receiver = Receiver()
    rows: list[Row] = []
    began = time.monotonic()
    failed = True

    def interrupted(signum: int, frame: Any) -> None:
        STOP.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        signal.signal(signal.SIGINT, interrupted)
        stack.start()
        drill = Drill(stack, receiver, args)
        drill.merchant_secrets = stack.create_merchants([f"s{n}-{drill.run_id}" for n in chosen])
        for number in chosen:
            name, fault, _, forge_share = SCENARIOS[number]
            row = drill.run(number, name, fault, forge_share)
            rows.append(row)
            log(format_row(row))
            for note in row.notes:
                log(f"    {note}")
            write_table(args, rows, time.monotonic() - began, partial=True)
        failed = any(row.bad() for row in rows)
    finally:
        stack.stop()
        receiver.close()
        if failed or args.keep:
            log(f"logs kept in {workdir / 'logs'}")
            shutil.rmtree(workdir / "pg", ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    write_table(args, rows, time.monotonic() - began)
    return 1 if failed else 0


def write_table(args: argparse.Namespace, rows: list[Row], elapsed: float, partial: bool = False) -> None:
    lines = [
        f"make chaos, {dt.date.today().isoformat()}, {os.cpu_count()} cores (shared), {args.orders} orders per "
        f"scenario, {args.concurrency} merchant threads, total {elapsed / 60:.1f} min",
        HEADER, *(format_row(row) for row in rows), "",
        *(f"{row.scenario}: {note}" for row in rows for note in row.notes),
    ]
    if not partial:
        print("\n".join(lines))
    if args.output:  # also after each scenario, so that a run cut short keeps what it measured
        Path(args.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
