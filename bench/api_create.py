"""Create-order throughput and latency against a bare one-INSERT DRF endpoint (`make bench-api`).

Two gunicorns with the same flags on loopback: the project (payments_site.settings) and the baseline
(bench.baseline_site: the same settings, with one endpoint at /bench/insert that INSERTs one row). A
thread pool of keep-alive http.client connections drives them in alternating rounds, so machine noise
falls on both. Knobs (environment): BENCH_WORKERS, BENCH_THREADS, BENCH_CONCURRENCY, BENCH_SECONDS (per
side), BENCH_ROUNDS, BENCH_WARMUP_S, BENCH_MAX_REQUESTS (per side). Prints key=value lines; always exits 0
once it has measured: it is a measurement, not a test.

BENCH_LADDER=1 (``make bench-api-ladder``) also measures the rungs between the two in bench/baseline_urls.py
(authentication and rate limit, validation, the service's writes) and prints each one's ratio to the baseline.
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
os.environ["DJANGO_SETTINGS_MODULE"] = "payments_site.settings"

CORES = os.cpu_count() or 2
WORKERS = int(os.environ.get("BENCH_WORKERS", CORES))  # a web host of its own: a process per core, 4 threads
THREADS = int(os.environ.get("BENCH_THREADS", 4))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", WORKERS * THREADS))
SECONDS = float(os.environ.get("BENCH_SECONDS", 15))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
WARMUP_S = float(os.environ.get("BENCH_WARMUP_S", 3))
MAX_REQUESTS = int(os.environ.get("BENCH_MAX_REQUESTS", 100_000))
LADDER = os.environ.get("BENCH_LADDER") == "1"
RUNGS = {"1": "auth_and_rate_limit", "2": "validation", "3": "service_create_without_key"}
TARGET_RATIO = 0.75
REDIS_URL = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))._replace(path="/14").geturl()
RUN_ID = f"bench-{int(time.time())}-{os.getpid()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(settings_module: str, log_file) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, DJANGO_SETTINGS_MODULE=settings_module, SANDBOX_SECRET="bench", REDIS_URL=REDIS_URL,
               DEBUG="0")
    env.pop("CELERY_BROKER_URL", None)  # the broker follows REDIS_URL: the bench's own Redis db
    cmd = [str(Path(sys.executable).parent / "gunicorn"), "payments_site.wsgi", "--bind", f"127.0.0.1:{port}",
           "--worker-class", "gthread", "--workers", str(WORKERS), "--threads", str(THREADS),
           "--keep-alive", "30", "--log-level", "warning"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT), port


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Target:
    """One endpoint: how to build its i-th request, and the status it answers when all went well."""

    def __init__(self, name: str, proc: subprocess.Popen, port: int, path: str, secret_key: str) -> None:
        self.name, self.proc, self.port, self.path, self.secret_key = name, proc, port, path, secret_key
        self.latencies: list[float] = []
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.elapsed = 0.0

    def request(self, i: int) -> tuple[str, dict[str, str]]:
        body = json.dumps({"merchant_order_no": f"{RUN_ID}-{i}", "amount": 100, "currency": "CNY",
                           "channel": "sandbox"})
        return body, {"Authorization": f"Bearer {self.secret_key}", "Content-Type": "application/json",
                      "Idempotency-Key": f"{RUN_ID}-{self.name}-{i}"}


COUNTER = itertools.count()  # one sequence for both sides: every merchant_order_no is unique


def send(conn: http.client.HTTPConnection, target: Target) -> int:
    body, headers = target.request(next(COUNTER))
    conn.request("POST", target.path, body, headers)
    response = conn.getresponse()
    response.read()
    return response.status


def wait_ready(target: Target, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if target.proc.poll() is not None:
            raise RuntimeError(f"gunicorn for {target.name} exited with {target.proc.returncode}")
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=10)
        try:
            status = send(conn, target)
            if status == 201:
                return
            raise RuntimeError(f"{target.name}: first request answered {status}")
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            conn.close()


def load(target: Target, seconds: float, max_requests: int, record: bool) -> None:
    """``CONCURRENCY`` keep-alive connections, each sending requests back to back until time or count runs out."""
    deadline = time.perf_counter() + seconds
    budget = itertools.count()
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
        latencies: list[float] = []
        ok = 0
        errors: dict[str, int] = {}
        while time.perf_counter() < deadline and next(budget) < max_requests:
            start = time.perf_counter()
            status: int | str  # the HTTP status, or the name of the exception that came instead
            try:
                status = send(conn, target)
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                if target.proc.poll() is not None:
                    break  # the server died: main() reports it after the round
            if status == 201:
                ok += 1
                latencies.append(time.perf_counter() - start)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1
        conn.close()
        if record:
            with lock:
                target.latencies += latencies
                target.ok += ok
                for key, count in errors.items():
                    target.errors[key] = target.errors.get(key, 0) + count

    started = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(CONCURRENCY)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if record:
        target.elapsed += time.perf_counter() - started


def percentile_ms(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[max(0, math.ceil(p * len(ordered)) - 1)] if ordered else float("nan")


def main() -> None:
    import django

    django.setup()
    import redis
    from django.db import connection

    from payments import services
    from payments.models import Merchant, Order, TransitionLog

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below when stopped
    redis_db = redis.Redis.from_url(REDIS_URL)
    redis_db.flushdb()
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_insert (id bigserial PRIMARY KEY, ref varchar(64) NOT NULL,"
                       " created_at timestamptz NOT NULL DEFAULT now())")
    merchant, secret_key = services.merchant_create(name=RUN_ID)
    Merchant.objects.filter(pk=merchant.pk).update(rate_limit_per_s=2**31 - 1)
    connection.close()
    log_file = tempfile.NamedTemporaryFile("w+", prefix="bench-gunicorn-", suffix=".log")
    procs: list[subprocess.Popen] = []
    try:
        proc, port = start_gunicorn("payments_site.settings", log_file)
        procs.append(proc)
        create = Target("create", proc, port, "/api/v1/orders", secret_key)
        proc, port = start_gunicorn("bench.baseline_site", log_file)
        procs.append(proc)
        baseline = Target("baseline", proc, port, "/bench/insert", secret_key)
        rungs = [Target(name, proc, port, f"/bench/ladder/{rung}", secret_key) for rung, name in RUNGS.items()
                 ] if LADDER else []
        for target in (create, baseline, *rungs):
            wait_ready(target)
            load(target, WARMUP_S, MAX_REQUESTS, record=False)
        print(f"bench: gunicorn gthread workers={WORKERS} threads={THREADS}, {CONCURRENCY} keep-alive connections,"
              f" {ROUNDS} alternating rounds, {SECONDS:g} s or {MAX_REQUESTS} requests per side", flush=True)
        for round_no in range(ROUNDS):
            sides = (create, baseline, *rungs)
            for target in sides if round_no % 2 == 0 else reversed(sides):
                load(target, SECONDS / ROUNDS, MAX_REQUESTS // ROUNDS, record=True)
                if target.proc.poll() is not None:
                    raise RuntimeError(f"gunicorn for {target.name} died")
    except BaseException:
        log_file.flush()
        log_file.seek(0)
        print("gunicorn log (tail):\n" + "".join(log_file.readlines()[-40:]), file=sys.stderr)
        raise
    finally:
        for proc in procs:
            stop(proc)
        log_file.close()
        orders = Order.objects.filter(merchant=merchant)
        TransitionLog.objects.filter(object_type="order", object_id__in=orders.values("public_id")).delete()
        orders.delete()
        merchant.delete()  # its keys, idempotency records and events go with it
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS bench_insert")
        redis_db.flushdb()  # the enqueued charges and rate-limit counters: the bench leaves no work behind

    create_rate = create.ok / create.elapsed
    baseline_rate = baseline.ok / baseline.elapsed
    ratio = create_rate / baseline_rate if baseline_rate else float("nan")
    for target in (create, baseline, *rungs):
        if target.errors:
            print(f"{target.name}_errors={json.dumps(target.errors, sort_keys=True)}")
    print(f"create_orders_per_s={create_rate:.1f}")
    print(f"create_p50_ms={percentile_ms(create.latencies, 0.50):.2f}")
    print(f"create_p99_ms={percentile_ms(create.latencies, 0.99):.2f}")
    print(f"baseline_per_s={baseline_rate:.1f}")
    print(f"baseline_p50_ms={percentile_ms(baseline.latencies, 0.50):.2f}")
    print(f"baseline_p99_ms={percentile_ms(baseline.latencies, 0.99):.2f}")
    for rung in rungs:
        print(f"ladder_{rung.name}_ratio={rung.ok / rung.elapsed / baseline_rate:.3f}")
    print(f"ratio={ratio:.3f}")
    print(f"target_ratio={TARGET_RATIO}")
    print(f"target_met={'yes' if ratio >= TARGET_RATIO else 'no'}")


if __name__ == "__main__":
    main()
