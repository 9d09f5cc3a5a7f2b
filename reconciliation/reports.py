"""A run's report, as CSV (streamed) and XLSX (openpyxl in write-only mode): summary, totals per side,
fingerprints, and every discrepancy with its resolution. Both are built from ``report_rows``, one row at a time,
so a run with many discrepancies is never held whole in memory."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from reconciliation.models import Discrepancy, Run
from reconciliation.selectors import rfc3339

DISCREPANCY_COLUMNS = [
    "kind", "status", "record", "out_trade_no", "out_refund_no", "channel_trade_no", "currency",
    "channel_amount", "internal_amount", "channel_status", "internal_status", "channel_time", "internal_time",
    "decision", "resolution", "resolved_by", "resolved_at",
]


def _when(value: Any) -> str:
    return rfc3339(value) or ""


def report_rows(run: Run) -> Iterator[list[Any]]:
    """The report as rows of cells: sections separated by a blank row, money in minor units."""
    counts: dict[str, int] = {}
    unresolved = 0
    for kind, status in run.discrepancies.values_list("kind", "status"):
        counts[kind] = counts.get(kind, 0) + 1
        unresolved += status in (Discrepancy.Status.OPEN, Discrepancy.Status.CARRY_OVER)
    yield ["reconciliation run", run.public_id]
    for label, value in (
        ("channel", run.channel), ("business_date", run.business_date.isoformat()), ("timezone", run.timezone),
        ("version", run.version), ("status", run.status), ("error", run.error), ("bill_rows", run.bill_rows),
        ("started_at", _when(run.started_at)), ("finished_at", _when(run.finished_at)),
        ("discrepancies", sum(counts.values())), ("unresolved", unresolved),
    ):
        yield [label, value]
    yield []
    yield ["totals", "channel", "internal"]
    sides = run.totals or {}
    channel, internal = sides.get("channel", {}), sides.get("internal", {})
    for label, path in (("payments_count", ("payments", "count")), ("payments_amount", ("payments", "amount")),
                        ("refunds_count", ("refunds", "count")), ("refunds_amount", ("refunds", "amount")),
                        ("fees", ("fees",)), ("net", ("net",))):
        yield [label, _dig(channel, path), _dig(internal, path)]
    yield ["fingerprint_sha256", run.channel_fingerprint, run.internal_fingerprint]
    yield ["fingerprints_equal", "yes" if run.fingerprints_equal else "no"]
    yield []
    yield ["discrepancies by kind", *sorted(counts)]
    yield ["", *(counts[k] for k in sorted(counts))]
    yield []
    yield DISCREPANCY_COLUMNS
    for d in run.discrepancies.order_by("id").iterator(chunk_size=2000):
        yield [
            d.kind, d.status, d.record, d.out_trade_no, d.out_refund_no, d.channel_trade_no, d.currency,
            d.channel_amount if d.channel_amount is not None else "",
            d.internal_amount if d.internal_amount is not None else "",
            d.channel_status, d.internal_status, _when(d.channel_time), _when(d.internal_time), d.decision,
            d.resolution, d.resolved_by, _when(d.resolved_at),
        ]


def _dig(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = data
    for part in path:
        value = value.get(part, "") if isinstance(value, dict) else ""
    return value


def csv_chunks(run: Run) -> Iterator[str]:
    """The CSV report, a line at a time (for a streaming response)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in report_rows(run):
        writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def xlsx_file(run: Run) -> IO[bytes]:
    """The XLSX report in a temporary file (write-only mode: rows go to disk as they are written)."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet(f"{run.channel} {run.business_date}")
    for row in report_rows(run):
        sheet.append(row)
    out = tempfile.TemporaryFile()
    workbook.save(out)
    out.seek(0)
    return out


def filename(run: Run, extension: str) -> str:
    return f"reconciliation-{run.channel}-{run.business_date}-v{run.version}.{extension}"
