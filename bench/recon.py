"""Reconciliation at scale (`make bench-recon`): 1,000,000 bill rows against 1,000,000 orders.

Generates the orders with COPY (not the ORM) and a sandbox-format bill file of the same day (with a few
injected discrepancies), then times, in turn:
- the reconciliation: ``reconciliation.services.run_reconcile`` reading the file as the sandbox adapter hands it
  over (``bill_file``: COPYed as it is and normalised in SQL, or parsed row by row with BENCH_PARSE=1), matched,
  totals and fingerprints, discrepancies, in a process of its own whose peak RSS is reported;
- the plain SQL baseline: COPY of the same file into a bare table and the same full outer join.
Both are timed BENCH_ROUNDS times (3), alternating, on a machine shared with other work. Prints key=value lines:
both times of each round, their medians and spread, the ratio of the medians and the peak RSS. BENCH_ROWS
changes the size.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
os.environ.setdefault("SANDBOX_SECRET", "bench-sandbox-secret")
os.environ["DJANGO_SETTINGS_MODULE"] = "payments_site.settings"

ROWS = int(os.environ.get("BENCH_ROWS", 1_000_000))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 3))
DAY = dt.date(2026, 12, 4)  # the sandbox's bill zone is UTC by default
INJECTED = {"dropped": 3, "amount": 3, "added": 3}


def setup_django() -> None:
    import django

    django.setup()


def generate(bill_path: Path) -> None:
    """1,000,000 paid sandbox orders of DAY (COPY) and their bill, minus/plus the injected discrepancies."""
    from django.db import connection
    from django.db.models import CharField

    from payments import services
    from payments.models import Merchant, Order

    merchant = Merchant.objects.filter(name="Bench recon merchant").first()
    if merchant is None:
        merchant, _ = services.merchant_create(name="Bench recon merchant")
    rng = random.Random(42)
    start = dt.datetime.combine(DAY, dt.time(0), dt.UTC)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE reconciliation_discrepancy, reconciliation_run")
        cursor.execute("DELETE FROM payments_order WHERE merchant_id = %s", [merchant.pk])
        columns = ("public_id, merchant_id, merchant_order_no, amount, currency, channel, status, description,"
                   " metadata, notify_url, pay_url, channel_trade_no, amount_refunded, failure_code, failure_message,"
                   " attention, charge_attempts, trace_id, expires_in, expires_at, paid_at, created_at, updated_at")
        # Text columns added since (NOT NULL, no database default): empty.
        listed = {name.strip() for name in columns.split(",")}
        added = [str(f.column) for f in Order._meta.concrete_fields
                 if str(f.column) not in listed and isinstance(f, CharField) and not f.null]
        columns += "".join(f", {name}" for name in added)
        with open(bill_path, "w", encoding="utf-8", newline="") as bill, \
                cursor.copy(f"COPY payments_order ({columns}) FROM STDIN") as copy:
            bill.write("type,out_trade_no,trade_no,out_refund_no,refund_no,amount,currency,status,completed_at\n")
            for i in range(ROWS):
                public_id = f"ord_bench{i:019d}"
                amount = rng.randint(1, 100_000)
                # Inside the day, away from its edges (the carry-over has its own test).
                paid_at = start + dt.timedelta(seconds=600 + i * (86400 - 1200) / ROWS)
                copy.write_row((public_id, merchant.pk, f"B-{i}", amount, "CNY", "sandbox", "succeeded", "", "{}",
                                "", "", f"sbx_t_{i}", 0, "", "", "", 1, "", 900, paid_at, paid_at, paid_at, paid_at,
                                *[""] * len(added)))
                if i < INJECTED["dropped"]:
                    continue
                if i < INJECTED["dropped"] + INJECTED["amount"]:
                    amount += 1
                stamp = paid_at.isoformat().replace("+00:00", "Z")
                bill.write(f"payment,{public_id},sbx_t_{i},,,{amount},CNY,SUCCEEDED,{stamp}\n")
            for j in range(INJECTED["added"]):
                bill.write(f"payment,ord_ghost{j:019d},sbx_t_g{j},,,100,CNY,SUCCEEDED,{DAY}T12:00:00Z\n")
        # The previous run's million orders were deleted: without a vacuum every scan (of both sides) reads them.
        cursor.execute("VACUUM ANALYZE payments_order")


def reconcile_child(run_id: int, bill_path: str) -> None:
    """The reconciling process: time the run and report its peak RSS."""
    setup_django()
    from django.db.models import Count

    from channels.base import BillFile
    from channels.sandbox.adapter import _bill_rows, bill_file
    from reconciliation import services

    started = time.perf_counter()
    file = open(bill_path, "rb")  # noqa: SIM115 (the BillFile closes it)
    with BillFile(file, _bill_rows) if os.environ.get("BENCH_PARSE") else bill_file(file) as bill:
        run = services.run_reconcile(run_id=run_id, rows=bill)
    elapsed = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    found = dict(run.discrepancies.values_list("kind").annotate(n=Count("id")).values_list("kind", "n"))
    print(f"recon_seconds={elapsed:.2f}")
    print(f"recon_peak_rss_mb={peak_kb / 1024:.0f}")
    print(f"recon_bill_rows={run.bill_rows}")
    print(f"recon_discrepancies={sorted(found.items())}")
    print(f"recon_fingerprints_equal={run.fingerprints_equal}")


def baseline(bill_path: Path) -> float:
    """COPY the same file into a bare table and run the same full outer join."""
    from django.db import connection

    from reconciliation import matching

    window = matching.Window(dt.datetime.combine(DAY, dt.time(0), dt.UTC),
                             dt.datetime.combine(DAY + dt.timedelta(days=1), dt.time(0), dt.UTC),
                             dt.timedelta(seconds=300))
    from django.conf import settings

    matching.session_memory(work_mem=settings.RECONCILIATION_WORK_MEM)  # the same session settings as the run
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_bare_bill")
        cursor.execute("CREATE UNLOGGED TABLE bench_bare_bill (type text, out_trade_no text, trade_no text,"
                       " out_refund_no text, refund_no text, amount bigint, currency text, status text,"
                       " completed_at timestamptz)")
        with open(bill_path, "rb") as bill, cursor.copy("COPY bench_bare_bill FROM STDIN (FORMAT csv, HEADER)") as copy:
            while chunk := bill.read(1 << 20):
                copy.write(chunk)
        cursor.execute("ANALYZE bench_bare_bill")
        bare = ("(SELECT type AS kind, CASE WHEN type = 'refund' THEN out_refund_no ELSE out_trade_no END AS key,"
                " out_trade_no, out_refund_no, trade_no AS channel_trade_no, amount, currency, lower(status) AS status,"
                " completed_at FROM bench_bare_bill)")
        cursor.execute(matching.join_sql(bare), window.params("sandbox", [""]))
        rows = cursor.fetchall()
        cursor.execute("DROP TABLE bench_bare_bill")
    elapsed = time.perf_counter() - started
    print(f"baseline_seconds={elapsed:.2f}")
    print(f"baseline_join_rows={len(rows)}")
    return elapsed


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--reconcile":
        reconcile_child(int(sys.argv[2]), sys.argv[3])
        return
    setup_django()
    from django.db import connection

    from reconciliation import services

    print(f"rows={ROWS} cores={os.cpu_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        bill_path = Path(tmp) / "bill.csv"
        started = time.perf_counter()
        generate(bill_path)
        print(f"generate_seconds={time.perf_counter() - started:.1f} bill_mb={bill_path.stat().st_size / 1e6:.0f}")
        # Alternated, BENCH_ROUNDS times (the machine is shared): the ratio is of the medians.
        bases, recons, peaks = [], [], []
        for round_ in range(1, ROUNDS + 1):
            print(f"round={round_}")
            bases.append(baseline(bill_path))
            run = services.run_create(channel="sandbox", business_date=DAY, triggered_by="bench")
            connection.close()
            out = subprocess.run([sys.executable, __file__, "--reconcile", str(run.pk), str(bill_path)],
                                 capture_output=True, text=True, check=True).stdout
            lines = [line for line in out.splitlines() if "=" in line and not line.startswith("{")]
            print("\n".join(lines))
            recons.append(float(next(line.split("=")[1] for line in lines if line.startswith("recon_seconds="))))
            peaks.append(int(next(line.split("=")[1] for line in lines if line.startswith("recon_peak_rss_mb="))))
        base, recon = statistics.median(bases), statistics.median(recons)
        print(f"baseline_seconds_median={base:.2f} spread={min(bases):.2f}-{max(bases):.2f}")
        print(f"recon_seconds_median={recon:.2f} spread={min(recons):.2f}-{max(recons):.2f}")
        print(f"recon_peak_rss_mb_max={max(peaks)}")
        each = ", ".join(f"{r / b:.2f}" for b, r in zip(bases, recons, strict=True))
        print(f"ratio={recon / base:.2f} (per round {each}; target <= 2.0; peak RSS target <= 300 MB)")
        print(f"ratio_of_best={min(recons) / min(bases):.2f} (the least disturbed round of each)")


if __name__ == "__main__":
    main()
