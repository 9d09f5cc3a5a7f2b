"""The two ways a bill reaches the staging table give the same rows: a sandbox bill COPYed as it is and normalised
in SQL (``BillCsv``), and the same file parsed row by row; a file COPY refuses falls back to the parser."""

from __future__ import annotations

import io

import pytest
from django.db import connection, transaction

from channels.base import BillFile, BillMalformed
from channels.sandbox.adapter import BILL_CSV, _bill_rows, bill_file
from reconciliation import matching

HEADER = BILL_CSV.header.decode()

BILL = "\r\n".join([
    HEADER,
    "payment,ord_a,sbx_t_1,,,1050,CNY,SUCCEEDED,2026-12-04T00:10:00.255600Z",
    "payment,ord_b,,,,1,USD,WAITING,2026-12-04T23:59:59+08:00",
    "payment,ord_c,sbx_t_3,,,99,JPY,CLOSED,",
    'refund,ord_a,sbx_t_1,ref_1,sbx_r_1,50,CNY,SUCCEEDED,"2026-12-04T12:00:00Z"',
    "refund,ord_a,sbx_t_1,,sbx_r_2,25,CNY,PROCESSING,2026-12-04T12:00:01Z",
    'payment,"ord_d, quoted\\ and tab\t","",,,7,EUR,SUCCEEDED,2026-12-04T01:00:00-05:00',
    "payment,ord_a,sbx_t_1,,,1050,CNY,SUCCEEDED,2026-12-04T00:10:00.255600Z",  # listed twice
]) + "\r\n"


def staged(run_pk: int) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {matching.STAGE_COLUMNS} FROM {matching.stage_table(run_pk)} ORDER BY 1, 2, 3, 6, 9")
        return cursor.fetchall()


def load(run_pk: int, bill: BillFile) -> tuple[int, list[tuple], str]:
    try:
        count = matching.load_bill(run_pk=run_pk, rows=bill)
        with connection.cursor() as cursor:
            cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [matching.stage_table(run_pk)])
            (kind,) = cursor.fetchone()
        return count, staged(run_pk), kind
    finally:
        matching.drop_stage(run_pk=run_pk)


@pytest.mark.django_db
@pytest.mark.parametrize("text", [BILL, BILL.replace("\r\n", "\n")])
def test_the_copied_bill_has_the_parsed_rows(text: str) -> None:
    parsed = load(900001, BillFile(io.BytesIO(text.encode()), _bill_rows))
    copied = load(900002, bill_file(io.BytesIO(text.encode())))

    assert parsed[2] == "r" and copied[2] == "v"  # a table of parsed rows; a view over the COPYed file
    assert copied[:2] == parsed[:2] and parsed[0] == 7
    refund = next(r for r in copied[1] if r[0] == "refund" and r[3] == "ref_1")
    assert refund[1] == "ref_1" and refund[5] == 50 and refund[8] == "succeeded"
    keyless = next(r for r in copied[1] if r[0] == "refund" and r[3] is None)
    assert keyless[1] == "ord_a" and keyless[8] == "processing"  # no refund number: keyed by the order
    b = next(r for r in copied[1] if r[2] == "ord_b")
    assert b[4] is None and b[9].isoformat() == "2026-12-04T15:59:59+00:00"  # times in UTC


@pytest.mark.django_db
def test_the_sides_of_both_ways_are_equal_and_the_join_finds_the_duplicates() -> None:
    import datetime as dt

    window = matching.Window(dt.datetime(2026, 12, 4, tzinfo=dt.UTC), dt.datetime(2026, 12, 5, tzinfo=dt.UTC),
                             dt.timedelta(seconds=300))
    figures = []
    for run_pk, bill in ((900003, BillFile(io.BytesIO(BILL.encode()), _bill_rows)),
                         (900004, bill_file(io.BytesIO(BILL.encode())))):
        try:
            matching.load_bill(run_pk=run_pk, rows=bill)
            found: list[matching.Duplicate] = []
            pairs = list(matching.unmatched(run_pk=run_pk, channel="sandbox", accounts=[""], window=window,
                                                duplicates=found))
            figures.append((matching.bill_side(run_pk=run_pk), found, len(pairs)))
            assert found == matching.duplicates(run_pk=run_pk)  # as grouping the bill finds them
        finally:
            matching.drop_stage(run_pk=run_pk)
    assert figures[0] == figures[1]
    assert [d[:4] for d in figures[0][1]] == [("payment", "ord_a", "ord_a", 2)]
    assert figures[0][2] == 7  # none of them is ours; each copy once


@pytest.mark.django_db
@pytest.mark.parametrize("line", [
    "payment,ord_x,,,,12.5,CNY,SUCCEEDED,2026-12-04T00:00:00Z",  # not minor units
    "payment,ord_x,,,,,CNY,SUCCEEDED,2026-12-04T00:00:00Z",  # no amount
    "payment,ord_x,,,,12,CNY,PROCESSING,2026-12-04T00:00:00Z",  # a refund's status on a payment
    "payment,ord_x,,,,12,CNY,SUCCEEDED,yesterday at noon",
])
def test_a_row_postgresql_refuses_is_parsed_and_refused_as_malformed(line: str) -> None:
    text = f"{HEADER}\npayment,ord_a,,,,1,CNY,SUCCEEDED,2026-12-04T00:00:00Z\n{line}\n"
    try:
        # (a COPY the parser's error ended aborts the transaction: this test's savepoint)
        with pytest.raises(BillMalformed), transaction.atomic():
            matching.load_bill(run_pk=900005, rows=bill_file(io.BytesIO(text.encode())))
    finally:
        matching.drop_stage(run_pk=900005)


@pytest.mark.django_db
def test_another_header_is_parsed_by_name() -> None:
    text = ("out_trade_no,type,trade_no,out_refund_no,refund_no,amount,currency,status,completed_at\n"
            "ord_a,payment,,,,1,CNY,SUCCEEDED,2026-12-04T00:00:00Z\n")
    count, rows, kind = load(900006, bill_file(io.BytesIO(text.encode())))
    assert (count, kind) == (1, "r") and rows[0][:3] == ("payment", "ord_a", "ord_a")
