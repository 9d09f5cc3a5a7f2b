"""Reconciliation on the simulators' real bills (Alipay's zipped GBK CSV, WeChat Pay's CSV with its summary and
hash): payments made through the API and the worker, discrepancies injected with /_sim/bills/<date>/adjust."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator

import openpyxl
import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from channels.base import CHINA_TIME, TradeResult, TradeStatus
from payments import services as payment_services
from payments.models import Order, TransitionLog
from reconciliation.models import Discrepancy, Run
from tests.admin_support import staff_groups
from tests.conftest import Actor, make_actor
from tests.e2e import orders
from tests.e2e.conftest import Simulator
from tests.e2e.orders import order_in, pay

pytestmark = pytest.mark.e2e


@pytest.fixture
def sim(request: pytest.FixtureRequest, e2e: Simulator) -> Iterator[tuple[str, Simulator]]:
    """The simulator of the channel the test is parametrized with, clean."""
    channel = request.param
    simulator = request.getfixturevalue(f"{channel}_sim")
    simulator.reset()
    yield channel, simulator
    simulator.clear_faults()


def today() -> dt.date:
    return dt.datetime.now(CHINA_TIME).date()


def paid(client: APIClient, channel: str, number: str, amount: int) -> Order:
    order = order_in(orders.create_order(client, number, amount, channel=channel)["id"], "pending")
    pay(order)
    return order_in(order.public_id, "succeeded")


def adjust(simulator: Simulator, day: dt.date, body: dict) -> None:
    simulator.http.post(f"/_sim/bills/{day.isoformat()}/adjust", json=body).raise_for_status()


def reconcile(channel: str, day: dt.date) -> tuple[Run, str]:
    out = io.StringIO()
    call_command("reconcile", channel=channel, date=day.isoformat(), stdout=out)
    return Run.objects.filter(channel=channel, business_date=day).latest("version"), out.getvalue()


def found(run: Run) -> set[tuple[str, str, str]]:
    return {(d.kind, d.out_refund_no or d.out_trade_no, d.status) for d in run.discrepancies.all()}


def finance_client() -> APIClient:
    staff_groups()  # the data migration's groups: an earlier transactional test emptied the table
    out = io.StringIO()
    call_command("create_staff_user", "fiona", "--group", "finance", stdout=out)
    token = next(line.split(": ", 1)[1] for line in out.getvalue().splitlines() if line.startswith("token: "))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.mark.parametrize("sim", ["alipay", "wechatpay"], indirect=True)
def test_exactly_the_injected_discrepancies_are_reported_and_the_safe_one_is_settled(
    sim: tuple[str, Simulator],
) -> None:
    channel, simulator = sim
    client = make_actor(f"{channel} recon merchant").client()
    kept = paid(client, channel, "R-KEEP", 1000)
    dropped = paid(client, channel, "R-DROP", 2000)
    changed = paid(client, channel, "R-AMOUNT", 3000)
    unheard = order_in(orders.create_order(client, "R-UNHEARD", 4000, channel=channel)["id"], "pending")
    simulator.fault("notify", "drop_notify")  # paid at the channel; we never hear of it (nor of its retries)
    pay(unheard)
    ghost = "ord_GhostOfAPaymentWeNeverHad0"
    adjust(simulator, today(), {"drop": [dropped.public_id], "amount": {changed.public_id: 2999},
                                "add": [{"out_trade_no": ghost, "amount": 77}]})

    run, output = reconcile(channel, today())

    assert run.status == "succeeded" and run.bill_rows == 4  # kept, changed, unheard, ghost
    assert found(run) == {
        ("missing_channel", dropped.public_id, "open"),
        ("amount_mismatch", changed.public_id, "open"),
        ("missing_internal", ghost, "open"),
        ("missing_internal", unheard.public_id, "auto_resolved"),
    }
    unheard.refresh_from_db()
    assert unheard.status == "succeeded"  # the same transition a notification would have applied
    assert TransitionLog.objects.filter(object_id=unheard.public_id, to_state="succeeded",
                                        source="reconciliation").exists()
    mismatch = run.discrepancies.get(kind="amount_mismatch")
    assert (mismatch.channel_amount, mismatch.internal_amount) == (2999, 3000)
    assert not run.fingerprints_equal
    # Our side as matched, before compensation: kept, dropped and changed (the unheard one was still pending).
    assert run.totals["internal"]["payments"] == {"count": 3, "amount": 6000}
    assert run.totals["channel"]["payments"] == {"count": 4, "amount": 1000 + 2999 + 4000 + 77}
    assert run.totals["channel"]["fees"] > 0  # both formats carry a fee (0.6%)
    assert kept.public_id not in {d.out_trade_no for d in run.discrepancies.all()}
    assert "4 discrepancies (3 unresolved)" in output

    # Finance downloads the reports; both hold every discrepancy.
    finance = finance_client()
    listed = finance.get(f"/api/v1/reconciliation/runs?date={today().isoformat()}&channel={channel}")
    assert listed.status_code == 200 and [r["id"] for r in listed.json()["data"]] == [run.public_id]
    detail = finance.get(f"/api/v1/reconciliation/runs/{run.public_id}").json()
    assert detail["discrepancies"]["total"] == 4 and detail["discrepancies"]["unresolved"] == 3
    report = finance.get(f"/api/v1/reconciliation/runs/{run.public_id}/report.csv")
    assert report.status_code == 200 and report["Content-Type"].startswith("text/csv")
    csv_bytes = b"".join(report.streaming_content)  # type: ignore[attr-defined]  # a streamed answer
    rows = list(csv.reader(io.StringIO(csv_bytes.decode())))
    header = rows.index(next(r for r in rows if r[:2] == ["kind", "status"]))
    assert {(r[0], r[3]) for r in rows[header + 1:]} == {(k, n) for k, n, _ in found(run)}
    xlsx = finance.get(f"/api/v1/reconciliation/runs/{run.public_id}/report.xlsx")
    assert xlsx.status_code == 200
    xlsx_bytes = b"".join(xlsx.streaming_content)  # type: ignore[attr-defined]  # a streamed answer
    sheet = openpyxl.load_workbook(io.BytesIO(xlsx_bytes), read_only=True).active
    assert sheet is not None
    cells = [list(r) for r in sheet.iter_rows(values_only=True)]
    start = next(i for i, r in enumerate(cells) if r[:2] == ["kind", "status"])
    assert {(r[0], r[3]) for r in cells[start + 1:]} == {(k, n) for k, n, _ in found(run)}

    # A merchant's key is refused, no credentials is 401.
    assert client.get("/api/v1/reconciliation/runs").status_code == 403
    assert APIClient().get(f"/api/v1/reconciliation/runs/{run.public_id}").status_code == 401

    # Running the date again adds a version and keeps the first.
    again, _ = reconcile(channel, today())
    assert again.version == 2 and Run.objects.filter(channel=channel, business_date=today()).count() == 2
    assert run.discrepancies.count() == 4
    # The unheard payment is ours now: the second version no longer reports it.
    assert found(again) == {(k, n, "open") for k, n, _ in found(run) if n != unheard.public_id}


@pytest.mark.parametrize("sim", ["wechatpay", "alipay"], indirect=True)
def test_a_clean_day_has_no_discrepancy_and_equal_fingerprints(sim: tuple[str, Simulator]) -> None:
    channel, simulator = sim
    client = make_actor(f"{channel} clean merchant").client()
    order = paid(client, channel, "C-1", 1050)
    paid(client, channel, "C-2", 1)
    response = client.post(f"/api/v1/orders/{order.public_id}/refunds", {"merchant_refund_no": "CR-1", "amount": 50},
                           format="json")
    assert response.status_code == 201
    order_in(order.public_id, "partially_refunded")

    run, _ = reconcile(channel, today())

    assert run.status == "succeeded" and run.discrepancies.count() == 0
    assert run.fingerprints_equal and len(run.channel_fingerprint) == 64
    assert run.totals["channel"]["refunds"] == run.totals["internal"]["refunds"] == {"count": 1, "amount": 50}
    assert run.totals["channel"]["net"] == 1051 - 50 - run.totals["channel"]["fees"]


def _paid_at(actor: Actor, number: str, at: dt.datetime, amount: int = 500) -> Order:
    """An order paid at ``at`` as the channel told us (the service a notification goes through)."""
    order, _ = payment_services.order_create(merchant=actor.merchant, merchant_order_no=number, amount=amount,
                                             currency="CNY", channel="alipay")
    trade = TradeResult(order.public_id, TradeStatus.SUCCEEDED, amount=amount, currency="CNY",
                        channel_trade_no=f"2026{number}", paid_at=at)
    return payment_services.order_apply_trade(order_id=order.pk, trade=trade, source="worker")


def test_midnight_in_beijing_belongs_to_its_day_and_carry_overs_match_the_next_day(
    db, alipay_sim: Simulator,
) -> None:
    alipay_sim.reset()
    actor = make_actor("Midnight merchant")
    day = dt.date(2026, 12, 1)
    last_second = dt.datetime(2026, 12, 1, 23, 59, 59, tzinfo=CHINA_TIME)  # 15:59:59 UTC: still 1 December
    late = _paid_at(actor, "M-LAST", last_second)
    # Our time says 1 December, Alipay booked it a few seconds later: on the 2nd's bill.
    across = _paid_at(actor, "M-ACROSS", last_second - dt.timedelta(seconds=2))
    adjust(alipay_sim, day, {"add": [{"out_trade_no": late.public_id, "amount": 500,
                                      "at": last_second.isoformat()}]})
    adjust(alipay_sim, day + dt.timedelta(days=1), {"add": [{"out_trade_no": across.public_id, "amount": 500,
                                                              "at": "2026-12-02T00:00:03+08:00"}]})

    first, _ = reconcile("alipay", day)
    # The 23:59:59 payment matched its own day; the other waits for the 2nd's bill before it is reported.
    assert found(first) == {("missing_channel", across.public_id, "carry_over")}
    second, _ = reconcile("alipay", day + dt.timedelta(days=1))
    assert found(second) == set()  # the 23:59:59 payment is not the 2nd's; the carried one matched
    assert second.carried_in == [across.public_id] and second.fingerprints_equal
    carried = Discrepancy.objects.get(run=first)
    assert carried.status == "auto_resolved" and "2026-12-02" in carried.resolution


def test_a_finance_decision_is_recorded_with_who_and_when(db, alipay_sim: Simulator) -> None:
    from reconciliation import services

    alipay_sim.reset()
    adjust(alipay_sim, dt.date(2026, 11, 30), {"add": [{"out_trade_no": "ord_NotOursAtAll000000000000", "amount": 9}]})
    run, _ = reconcile("alipay", dt.date(2026, 11, 30))
    [d] = run.discrepancies.all()
    with pytest.raises(ValueError):
        services.discrepancy_resolve(discrepancy_id=d.pk, decision="accept", reason=" ", by="fiona")
    services.discrepancy_resolve(discrepancy_id=d.pk, decision="write_off", reason="test payment", by="fiona")
    d.refresh_from_db()
    assert (d.status, d.decision, d.resolved_by, d.resolution) == ("resolved", "write_off", "fiona", "test payment")
    assert d.resolved_at is not None
