"""The set-wise part of a run: the bill COPYed into a staging table, matched against our books in SQL.

Python only streams the bill into COPY (never holding the file) and reads back what did not match, which on a
normal day is nothing. A bill PostgreSQL can read itself (``BillCsv``: the sandbox's plain CSV) is COPYed as it is
and normalised in SQL by a view; any other is parsed row by row and COPYed as text lines. One full outer join by
(kind, out_trade_no / out_refund_no) finds every row that differs, and the trades the bill lists twice;
aggregates over each side give its totals and fingerprint.

Our side of a business day [start, end) is read over [start - carry, end + carry): a payment whose time falls
just across midnight from the channel's is matched here, and one of ours near an edge that the bill does not
list is looked for in the neighbouring day's run before it is reported (services.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import psycopg
from django.db import DataError, IntegrityError, connection, transaction

from channels.base import BillCsv, BillFile, BillRow

PAID_STATES = ("succeeded", "partially_refunded", "refunded")
COPY_BATCH = 1000

STAGE_COLUMNS = "kind, key, out_trade_no, out_refund_no, channel_trade_no, amount, fee, currency, status, completed_at"


@dataclass(frozen=True)
class Window:
    start: dt.datetime  # midnight of the business date in the channel's zone, aware
    end: dt.datetime
    carry: dt.timedelta

    @property
    def low(self) -> dt.datetime:
        return self.start - self.carry

    @property
    def high(self) -> dt.datetime:
        return self.end + self.carry

    def params(self, channel: str, accounts: list[str]) -> dict[str, Any]:
        return {"channel": channel, "accounts": accounts, "start": self.start, "end": self.end, "low": self.low,
                "high": self.high}


def stage_table(run_pk: int) -> str:
    return f"reconciliation_stage_{int(run_pk)}"


def raw_table(run_pk: int) -> str:
    """The bill as COPYed when the staging table is a view over it (``BillCsv``)."""
    return f"reconciliation_stage_{int(run_pk)}_raw"


# Our succeeded payments and refunds of the channel account (its orders: ``accounts`` is the values of
# Order.channel_account that mean it) whose time falls in [low, high): the same keys and normalised fields as the
# staging table.
OURS_SQL = f"""
    SELECT 'payment'::text AS kind, o.public_id::text AS key, o.public_id::text AS out_trade_no,
           o.id AS order_id, NULL::bigint AS refund_id, o.amount, o.currency::text AS currency,
           o.status::text AS status, o.paid_at AS at
      FROM payments_order o
     WHERE o.channel = %(channel)s AND o.paid_at >= %(low)s AND o.paid_at < %(high)s
       AND o.status IN {PAID_STATES!r} AND o.channel_account = ANY(%(accounts)s)
    UNION ALL
    SELECT 'refund', r.public_id, o.public_id, o.id, r.id, r.amount, r.currency, r.status, r.succeeded_at
      FROM payments_refund r JOIN payments_order o ON o.id = r.order_id
     WHERE o.channel = %(channel)s AND r.status = 'succeeded'
       AND r.succeeded_at >= %(low)s AND r.succeeded_at < %(high)s AND o.channel_account = ANY(%(accounts)s)
"""


LOOK = ("b.key IS NULL OR o.key IS NULL OR b.status <> 'succeeded' OR b.amount <> o.amount"
        " OR b.currency <> o.currency OR o.at < %(start)s OR o.at >= %(end)s")


def join_sql(stage: str, *, copies: bool = False) -> str:
    """The full outer join of the bill and our books, restricted to what needs a look: rows on one side
    only, rows that differ, and matches whose time on our side fell on the neighbouring day (carry-overs).

    With ``copies``, also every row of a trade the bill lists more than once, with how many times and whether
    it needs a look otherwise: the count is a window over the order the merge join sorts the bill in anyway,
    far cheaper than grouping the bill by itself."""
    columns = """b.kind, b.key, b.out_trade_no, b.out_refund_no, b.channel_trade_no, b.amount, b.currency, b.status,
           b.completed_at,
           o.kind, o.key, o.out_trade_no, o.order_id, o.refund_id, o.amount, o.currency, o.status, o.at"""
    if copies:
        bill = f"(SELECT s.*, count(*) OVER (PARTITION BY s.kind, s.key) AS copies FROM {stage} s)"
        columns, where = f"{columns}, coalesce({LOOK}, false), b.copies", f"{LOOK} OR b.copies > 1"
    else:
        bill, where = stage, LOOK
    return f"""
    WITH ours AS ({OURS_SQL})
    SELECT {columns}
      FROM {bill} b FULL OUTER JOIN ours o ON o.kind = b.kind AND o.key = b.key
     WHERE {where}
    """


@dataclass(frozen=True)
class Side:
    kind: str
    key: str
    out_trade_no: str
    amount: int
    currency: str
    status: str
    at: dt.datetime | None


@dataclass(frozen=True)
class Pair:
    """One row of the join: what the bill says, what we have (either may be missing)."""

    bill: Side | None
    ours: Side | None
    out_refund_no: str = ""
    channel_trade_no: str = ""
    order_id: int | None = None
    refund_id: int | None = None


def load_bill(*, run_pk: int, rows: Iterable[BillRow]) -> int:
    """Create the run's staging table (or view) and COPY the bill into it as it is read; returns the row count.

    Normalised on the way: money as integer minor units (the adapters' BillRow), times as UTC, one key per
    row (out_trade_no for a payment, out_refund_no for a refund). UNLOGGED: it lives for one run, and is
    dropped by ``drop_stage``. A ``BillFile`` with a ``BillCsv`` is COPYed as it is (``_load_csv``); should
    PostgreSQL refuse it, it is parsed row by row, whose ``BillMalformed`` (or rows) count."""
    drop_stage(run_pk=run_pk)
    if isinstance(rows, BillFile) and rows.csv is not None and rows.file is not None:
        try:
            with transaction.atomic():  # a refused COPY leaves nothing behind
                count = _load_csv(run_pk, rows.file, rows.csv)
        except (psycopg.DataError, psycopg.IntegrityError, DataError, IntegrityError):
            count = None
        if count is not None:
            return count
    return _load_rows(run_pk, rows)


def _load_rows(run_pk: int, rows: Iterable[BillRow]) -> int:
    stage = stage_table(run_pk)
    count = 0
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE UNLOGGED TABLE {stage} (kind text NOT NULL, key text NOT NULL, out_trade_no text NOT NULL,"
            " out_refund_no text, channel_trade_no text, amount bigint NOT NULL, fee bigint NOT NULL,"
            " currency text NOT NULL, status text NOT NULL, completed_at timestamptz)"
        )
        with cursor.copy(f"COPY {stage} ({STAGE_COLUMNS}) FROM STDIN") as copy:
            lines: list[str] = []
            for row in rows:  # COPY's text format, written in batches: far cheaper than a write_row per row
                key = row.out_refund_no if row.kind == "refund" and row.out_refund_no else row.out_trade_no
                at = row.completed_at.astimezone(dt.UTC).isoformat() if row.completed_at is not None else "\\N"
                lines.append(f"{_text(row.kind)}\t{_text(key)}\t{_text(row.out_trade_no)}\t{_text(row.out_refund_no)}"
                             f"\t{_text(row.channel_trade_no)}\t{int(row.amount)}\t{int(row.fee)}\t{_text(row.currency)}"
                             f"\t{_text(row.status)}\t{at}\n")
                if len(lines) >= COPY_BATCH:
                    copy.write("".join(lines))
                    count += len(lines)
                    lines.clear()
            copy.write("".join(lines))
            count += len(lines)
        cursor.execute(f"ANALYZE {stage}")
    return count


def _text(value: str | None) -> str:
    """A value in COPY's text format: NULL as \\N, the four characters it escapes escaped."""
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _load_csv(run_pk: int, file: IO[bytes], spec: BillCsv) -> int | None:
    """COPY a plain CSV bill untouched into ``<stage>_raw`` and make the staging view normalise it (``BillCsv``);
    None if the file does not start with the header the view expects."""
    file.seek(0)
    if file.readline().rstrip(b"\r\n") != spec.header:
        return None
    stage, raw = stage_table(run_pk), raw_table(run_pk)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE UNLOGGED TABLE {raw} ({spec.columns})")
        cursor.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
                       " AND NOT attisdropped AND atttypid = 'text'::regtype ORDER BY attnum", [raw])
        text_columns = ", ".join(name for (name,) in cursor.fetchall())
        force = f", FORCE_NOT_NULL ({text_columns})" if text_columns else ""
        with cursor.copy(f"COPY {raw} FROM STDIN (FORMAT csv, ENCODING '{spec.encoding}'{force})") as copy:
            while chunk := file.read(1 << 20):
                copy.write(chunk)
        count = cursor.rowcount
        cursor.execute(f"CREATE VIEW {stage} AS {spec.select.replace('{raw}', raw)}")
        cursor.execute(f"ANALYZE {raw}")
    return int(count)


def session_memory(*, work_mem: str | None) -> None:
    """Let this session's sorts and hashes (the join, the fingerprints' ordered aggregates) work in memory
    rather than in temporary files, without JIT (compiling them cost more than it saved: 0.2 s of the join of a
    million rows); ``None`` puts the server's defaults back."""
    with connection.cursor() as cursor:
        if work_mem:
            cursor.execute("SELECT set_config('work_mem', %s, false), set_config('jit', 'off', false)", [work_mem])
        else:
            cursor.execute("RESET work_mem")
            cursor.execute("RESET jit")


def drop_stage(*, run_pk: int) -> None:
    stage = stage_table(run_pk)
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [stage])
        found = cursor.fetchone()
        cursor.execute(f"DROP {'VIEW' if found and found[0] == 'v' else 'TABLE'} IF EXISTS {stage}")
        cursor.execute(f"DROP TABLE IF EXISTS {raw_table(run_pk)}")


Duplicate = tuple[str, str, str, int, int, str, dt.datetime | None]


def unmatched(*, run_pk: int, channel: str, accounts: list[str], window: Window, duplicates: list[Duplicate],
              batch: int = 2000) -> Iterator[Pair]:
    """The join's rows that need a look, read through a server-side cursor (a bad day may have many). The
    trades the bill lists more than once are added to ``duplicates`` (as ``duplicates()`` gives them) once the
    rows are all read."""
    sql = join_sql(stage_table(run_pk), copies=True)
    # (kind, key) -> [out_trade_no, copies, amount, currency, first time], each the least of the copies'
    listed: dict[tuple[str, str], list[Any]] = {}
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, window.params(channel, accounts))
        while chunk := cursor.fetchmany(batch):
            for r in chunk:
                if r[19] is not None and r[19] > 1:
                    seen = listed.get((r[0], r[1]))
                    if seen is None:
                        listed[(r[0], r[1])] = [r[2], r[19], r[5], r[6], r[8]]
                    else:
                        seen[0], seen[2], seen[3] = min(seen[0], r[2]), min(seen[2], r[5]), min(seen[3], r[6])
                        seen[4] = r[8] if seen[4] is None else seen[4] if r[8] is None else min(seen[4], r[8])
                if not r[18]:
                    continue  # a copy that needs no other look
                bill = Side(r[0], r[1], r[2], r[5], r[6], r[7], r[8]) if r[1] is not None else None
                ours = Side(r[9], r[10], r[11], r[14], r[15], r[16], r[17]) if r[10] is not None else None
                yield Pair(bill, ours, out_refund_no=r[3] or "", channel_trade_no=r[4] or "", order_id=r[12],
                           refund_id=r[13])
    duplicates.extend((kind, key, *rest) for (kind, key), rest in sorted(listed.items()))


def duplicates(*, run_pk: int) -> list[Duplicate]:
    """(kind, key, out_trade_no, copies, amount, currency, first time) of each trade the bill lists twice."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT kind, key, min(out_trade_no), count(*), min(amount), min(currency), min(completed_at)"
            f"  FROM {stage_table(run_pk)} GROUP BY kind, key HAVING count(*) > 1 ORDER BY kind, key"
        )
        return list(cursor.fetchall())


def _side_sql(alias: str, condition: str) -> str:
    """Counts, sums and the fingerprint of one side of the join (``alias`` b or o), over rows meeting
    ``condition``. The fingerprint is SHA-256 of the side's normalised lines, sorted: equal fingerprints prove
    identical rows (kind, key, out_trade_no, amount, currency)."""
    c = condition
    line = (f"{alias}.kind || '|' || {alias}.key || '|' || {alias}.out_trade_no || '|' || {alias}.amount"
            f" || '|' || {alias}.currency")
    return (
        f"count(*) FILTER (WHERE {c} AND {alias}.kind = 'payment'),"
        f" coalesce(sum({alias}.amount) FILTER (WHERE {c} AND {alias}.kind = 'payment'), 0),"
        f" count(*) FILTER (WHERE {c} AND {alias}.kind = 'refund'),"
        f" coalesce(sum({alias}.amount) FILTER (WHERE {c} AND {alias}.kind = 'refund'), 0),"
        f" encode(sha256(convert_to(coalesce(string_agg({line}, E'\\n' ORDER BY {line}), ''), 'UTF8')), 'hex')"
    )


@dataclass(frozen=True)
class BillSide:
    """The bill's totals and its fingerprint."""

    totals: dict[str, Any]
    fingerprint: str


def _totals(values: tuple[Any, ...], fee: int) -> dict[str, Any]:
    payments, refunds = int(values[1]), int(values[3])
    return {"payments": {"count": values[0], "amount": payments},
            "refunds": {"count": values[2], "amount": refunds}, "fees": fee, "net": payments - refunds - fee}


def bill_side(*, run_pk: int) -> BillSide:
    """The channel's side: the whole bill."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {_side_sql('b', 'true')}, coalesce(sum(b.fee), 0) FROM {stage_table(run_pk)} b")
        bill = cursor.fetchone()
    assert bill is not None
    return BillSide(_totals(bill[0:5], int(bill[5])), bill[4])


def our_side(
    *, run_pk: int, channel: str, accounts: list[str], window: Window, carried_out: list[str]
) -> tuple[dict[str, Any], str]:
    """Totals and fingerprint of our side: what belongs to this bill, our rows of the business day less those the
    neighbouring day's bill listed (``carried_out``), plus those of the neighbouring day's margin that this bill
    listed (matched carry-overs)."""
    stage = stage_table(run_pk)
    ours_condition = (
        "((o.at >= %(start)s AND o.at < %(end)s AND o.key <> ALL(%(carried_out)s))"
        f" OR EXISTS (SELECT 1 FROM {stage} b WHERE b.kind = o.kind AND b.key = o.key))"
    )
    with connection.cursor() as cursor:
        cursor.execute(f"WITH ours AS ({OURS_SQL}) SELECT {_side_sql('o', 'true')} FROM ours o WHERE {ours_condition}",
                       {**window.params(channel, accounts), "carried_out": carried_out})
        ours = cursor.fetchone()
    assert ours is not None
    return _totals(ours[0:5], 0), ours[4]
