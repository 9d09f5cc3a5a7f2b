"""Reconciliation runs: download the bill, match it in SQL, record discrepancies, compensate what is safe.

A run is state in the database (``Run``), so that a task re-delivered or a command run again picks it up where
it stands. Channel calls (the bill, a trade query) happen outside any transaction. Compensation goes through
``payments.services`` exactly as a callback does; nothing here writes an order's state, and nothing is ever
reversed automatically: what is not safe waits for a decision (``discrepancy_resolve``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable

import sentry_sdk
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from channels.base import BillNotReady, BillRow, ChannelError, bill_zone
from channels.registry import channel_for_account, get_channel
from payments import services as payment_services
from payments.models import OPEN_ORDER_STATES, Order, OrderStatus, TransitionLog
from reconciliation import matching, metrics
from reconciliation.models import Discrepancy, Run

log = logging.getLogger(__name__)

Kind = Discrepancy.Kind
DStatus = Discrepancy.Status
# Orders whose payment the bill shows and a query can settle: the same transition a notification would apply
# (for closed and failed ones, the late-payment path: flagged for ops).
COMPENSABLE_STATES = (*OPEN_ORDER_STATES, OrderStatus.CLOSED, OrderStatus.FAILED)
LATE_PAYMENT_FLAGS = ("paid_after_closed", "paid_after_failed")


def business_window(*, channel: str, day: dt.date) -> matching.Window:
    """[midnight, next midnight) of ``day`` in the channel's bill zone, with the carry-over margin."""
    zone = bill_zone(get_channel(channel).bill_timezone)
    start = dt.datetime.combine(day, dt.time(0), zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), zone)
    return matching.Window(start, end, dt.timedelta(seconds=settings.RECONCILIATION_CARRY_OVER_S))


def previous_business_date(*, channel: str, now: dt.datetime | None = None) -> dt.date:
    zone = bill_zone(get_channel(channel).bill_timezone)
    return (now or timezone.now()).astimezone(zone).date() - dt.timedelta(days=1)


def run_create(*, channel: str, business_date: dt.date, account: str = "", triggered_by: str = "") -> Run:
    """A new version of (channel account, business date); earlier versions are kept. ``account``: the primary's
    unless named (a channel's backup account has its own bill and its own runs)."""
    adapter = channel_for_account(channel, account)
    for _ in range(5):
        try:
            with transaction.atomic():
                latest = (Run.objects.filter(channel=channel, account=adapter.account, business_date=business_date)
                          .aggregate(v=Max("version")))
                return Run.objects.create(
                    channel=channel, account=adapter.account, business_date=business_date,
                    version=(latest["v"] or 0) + 1, timezone=adapter.bill_timezone, triggered_by=triggered_by[:64],
                )
        except IntegrityError:
            continue  # another run of the same date took that version just now: take the next one
    raise RuntimeError("could not allocate a run version")


def run_execute(*, run_id: int, progress: Callable[[str], None] | None = None) -> Run:
    """Download the run's bill and reconcile it. ``BillNotReady`` (and other retryable outcomes) are recorded
    on the run and raised for the caller to retry later. A finished run is left as it is."""
    run = Run.objects.get(pk=run_id)
    if run.status in (Run.Status.SUCCEEDED, Run.Status.FAILED):
        return run
    Run.objects.filter(pk=run_id).update(
        bill_attempts=run.bill_attempts + 1, started_at=run.started_at or timezone.now()
    )
    try:
        bill = channel_for_account(run.channel, run.account).download_bill(day=run.business_date)
    except BillNotReady as exc:
        Run.objects.filter(pk=run_id).update(status=Run.Status.WAITING_BILL, error=f"{exc.code}: {exc.message}"[:255])
        log.info("bill of %s %s not ready (%s)", run.channel, run.business_date, exc.code,
                 extra={"channel": run.channel, "run_id": run.public_id})
        raise
    with bill:
        return run_reconcile(run_id=run_id, rows=bill, progress=progress)


def run_reconcile(*, run_id: int, rows: Iterable[BillRow], progress: Callable[[str], None] | None = None) -> Run:
    """Reconcile a run against bill rows already downloaded: load, match, record, compensate, finish."""
    say = progress or (lambda message: None)
    run = Run.objects.get(pk=run_id)
    window = business_window(channel=run.channel, day=run.business_date)
    Run.objects.filter(pk=run_id).update(status=Run.Status.RUNNING, error="")
    try:
        say(f"loading the {run.channel} bill of {run.business_date}…")
        matching.session_memory(work_mem=settings.RECONCILIATION_WORK_MEM)
        lines = matching.load_bill(run_pk=run.pk, rows=rows)
        say(f"loaded {lines} bill rows; matching…")
        carried_in, carried_out = _record_discrepancies(run, window)
        bill = matching.bill_side(run_pk=run.pk)
        internal, internal_fingerprint = matching.our_side(
            run_pk=run.pk, channel=run.channel, accounts=our_accounts(run), window=window, carried_out=carried_out
        )
    except Exception as exc:
        run_fail(run_id=run_id, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        matching.drop_stage(run_pk=run.pk)
        matching.session_memory(work_mem=None)
    Run.objects.filter(pk=run_id).update(
        bill_rows=lines, carried_in=carried_in, totals={"channel": bill.totals, "internal": internal},
        channel_fingerprint=bill.fingerprint, internal_fingerprint=internal_fingerprint,
    )
    _settle_carry_overs(run, carried_in)
    say("compensating what is safe…")
    run_compensate(run_id=run_id)
    return run_finish(run_id=run_id)


def our_accounts(run: Run) -> list[str]:
    """The ``Order.channel_account`` values of the run's account: its id, and for the primary account also ""
    (orders placed before accounts were recorded)."""
    return [run.account, ""] if run.account == get_channel(run.channel).account else [run.account]


def _neighbour_carried_in(run: Run, day: dt.date) -> list[str] | None:
    """The keys the latest finished run of ``day`` matched as carry-overs; None if that day has no run yet."""
    neighbour = (Run.objects.filter(channel=run.channel, account=run.account, business_date=day,
                                    status=Run.Status.SUCCEEDED)
                 .order_by("-version").first())
    return None if neighbour is None else list(neighbour.carried_in)


def _record_discrepancies(run: Run, window: matching.Window) -> tuple[list[str], list[str]]:
    """Store what the join found; returns (keys matched across midnight, our keys the neighbour's bill had)."""
    carried_in: list[str] = []
    carried_out: list[str] = []
    neighbours: dict[dt.date, list[str] | None] = {}
    batch: list[Discrepancy] = []
    pending_missing: list[Discrepancy] = []

    def add(d: Discrepancy) -> None:
        batch.append(d)
        if len(batch) >= 1000:
            Discrepancy.objects.bulk_create(batch)
            batch.clear()

    duplicates: list[matching.Duplicate] = []
    for pair in matching.unmatched(run_pk=run.pk, channel=run.channel, accounts=our_accounts(run), window=window,
                                   duplicates=duplicates):
        bill, ours = pair.bill, pair.ours
        common = {"run": run, "record": (bill or ours).kind, "out_refund_no": pair.out_refund_no,  # type: ignore[union-attr]
                  "channel_trade_no": pair.channel_trade_no, "order_id": pair.order_id, "refund_id": pair.refund_id}
        if bill is not None:
            common.update(out_trade_no=bill.out_trade_no, currency=bill.currency, channel_amount=bill.amount,
                          channel_status=bill.status, channel_time=bill.at)
        if ours is not None:
            common.update(out_trade_no=ours.out_trade_no, currency=ours.currency, internal_amount=ours.amount,
                          internal_status=ours.status, internal_time=ours.at)
            if ours.kind == "refund":
                common["out_refund_no"] = ours.key
        if bill is not None and ours is not None:
            if bill.status != "succeeded":
                add(Discrepancy(kind=Kind.STATUS_MISMATCH, **common))
            elif bill.amount != ours.amount or bill.currency != ours.currency:
                add(Discrepancy(kind=Kind.AMOUNT_MISMATCH, **common))
            else:
                carried_in.append(ours.key)  # matched, our time on the neighbouring day: a carry-over
        elif bill is not None:
            if bill.status != "succeeded":
                add(Discrepancy(kind=Kind.STATUS_MISMATCH, **common))
            else:
                pending_missing.append(Discrepancy(kind=Kind.MISSING_INTERNAL, **common))
        elif ours is not None and ours.at is not None and window.start <= ours.at < window.end:
            near_end = ours.at >= window.end - window.carry
            near_start = ours.at < window.start + window.carry
            if near_end or near_start:
                day = run.business_date + dt.timedelta(days=1 if near_end else -1)
                if day not in neighbours:
                    neighbours[day] = _neighbour_carried_in(run, day)
                keys = neighbours[day]
                if keys is not None and ours.key in keys:
                    carried_out.append(ours.key)  # the neighbouring day's bill has it
                    continue
                if keys is None:
                    add(Discrepancy(kind=Kind.MISSING_CHANNEL, status=DStatus.CARRY_OVER, awaits_date=day, **common))
                    continue
            add(Discrepancy(kind=Kind.MISSING_CHANNEL, **common))
        # ours only, outside the business day: it belongs to the neighbouring day's run.
    if batch:
        Discrepancy.objects.bulk_create(batch)
    _add_missing_internal(pending_missing)
    Discrepancy.objects.bulk_create(
        Discrepancy(run=run, kind=Kind.DUPLICATE, record=kind, out_trade_no=out_trade_no,
                    out_refund_no=key if kind == "refund" else "", channel_amount=amount, currency=currency,
                    channel_time=at, channel_status="succeeded", resolution=f"listed {copies} times")
        for kind, key, out_trade_no, copies, amount, currency, at in duplicates
    )
    return carried_in, carried_out


def _add_missing_internal(found: list[Discrepancy]) -> None:
    """Fill in our side of what the bill has and we do not have as succeeded (an order still open, closed or
    failed; or none at all), so that compensation and ops see both."""
    for start in range(0, len(found), 1000):
        chunk = found[start:start + 1000]
        orders = {o.public_id: o for o in Order.objects.filter(public_id__in=[d.out_trade_no for d in chunk])}
        for d in chunk:
            order = orders.get(d.out_trade_no)
            if order is not None and d.record == "payment":
                d.order_id, d.internal_amount, d.internal_status = order.pk, order.amount, order.status
                d.internal_time = order.paid_at
        Discrepancy.objects.bulk_create(chunk)


def _settle_carry_overs(run: Run, carried_in: list[str]) -> None:
    """Carry-overs of the neighbouring days that waited for this run: matched here, or now really missing."""
    waiting = Discrepancy.objects.filter(
        status=DStatus.CARRY_OVER, awaits_date=run.business_date, run__channel=run.channel,
        run__account=run.account,
    )
    keys = set(carried_in)
    now = timezone.now()
    for d in waiting:
        key = d.out_refund_no if d.record == "refund" else d.out_trade_no
        if key in keys:
            d.status, d.resolution = DStatus.AUTO_RESOLVED, f"carry-over: in the bill of {run.business_date}"
            d.resolved_by, d.resolved_at = "reconciliation", now
        else:
            d.status = DStatus.OPEN
            d.resolution = f"not in the bill of {run.business_date} either"
            metrics.DISCREPANCIES.labels(channel=run.channel, kind=d.kind).inc()
        d.save(update_fields=["status", "resolution", "resolved_by", "resolved_at"])


def run_compensate(*, run_id: int) -> None:
    """Settle, through the services a callback uses, each payment the bill has and our order does not show
    as paid: query the channel (outside any transaction), then apply the answer as a notification would."""
    candidates = Discrepancy.objects.filter(
        run_id=run_id, kind=Kind.MISSING_INTERNAL, status=DStatus.OPEN, record="payment", order__isnull=False,
        order__status__in=COMPENSABLE_STATES,
    ).select_related("order")
    for d in candidates:
        order = d.order
        assert order is not None
        try:
            trade = payment_services.channel_of(order).query_trade(out_trade_no=order.public_id)
        except ChannelError as exc:
            Discrepancy.objects.filter(pk=d.pk).update(resolution=f"query failed ({exc.code}); try again"[:255])
            continue
        order = payment_services.order_apply_trade(
            order_id=order.pk, trade=trade, source=TransitionLog.Source.RECONCILIATION
        )
        if order.status in matching.PAID_STATES:
            note = f"order {order.status} after querying the channel"
        elif order.attention in LATE_PAYMENT_FLAGS:
            note = f"late payment: the order stays {order.status}, flagged {order.attention} for ops (accept or refund)"
        else:
            Discrepancy.objects.filter(pk=d.pk).update(
                resolution=f"the channel answered {trade.status}; the order stays {order.status}"[:255]
            )
            continue
        Discrepancy.objects.filter(pk=d.pk, status=DStatus.OPEN).update(
            status=DStatus.AUTO_RESOLVED, resolution=note[:255], resolved_by="reconciliation",
            resolved_at=timezone.now(), internal_status=order.status,
        )
        log.info("reconciliation settled %s: %s", order.public_id, note,
                 extra={"order_id": order.public_id, "channel": order.channel, "key_path": True})


def run_finish(*, run_id: int) -> Run:
    """Mark the run done, count what it found, and tell ops when something waits for them."""
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run_id)
        if run.status == Run.Status.SUCCEEDED:
            return run
        run.status, run.finished_at = Run.Status.SUCCEEDED, timezone.now()
        run.save(update_fields=["status", "finished_at"])
    found = list(run.discrepancies.exclude(status=DStatus.CARRY_OVER).values_list("kind", "status"))
    for kind, _ in found:
        metrics.DISCREPANCIES.labels(channel=run.channel, kind=kind).inc()
    metrics.RUNS.labels(channel=run.channel, outcome="succeeded").inc()
    unresolved = sum(1 for _, status in found if status == DStatus.OPEN)
    if unresolved:
        message = (f"reconciliation {run.channel} {run.business_date} v{run.version}: {unresolved} unresolved "
                   f"discrepancies wait for a decision")
        log.warning(message, extra={"channel": run.channel, "run_id": run.public_id, "key_path": True})
        sentry_sdk.capture_message(message, level="warning")
    return run


def run_fail(*, run_id: int, error: str) -> Run:
    """The run gave up (no bill in time, or an error): recorded, logged and sent to Sentry."""
    Run.objects.filter(pk=run_id).exclude(status=Run.Status.SUCCEEDED).update(
        status=Run.Status.FAILED, error=error[:255], finished_at=timezone.now()
    )
    run = Run.objects.get(pk=run_id)
    metrics.RUNS.labels(channel=run.channel, outcome="failed").inc()
    message = f"reconciliation {run.channel} {run.business_date} v{run.version} failed: {error}"
    log.warning(message, extra={"channel": run.channel, "run_id": run.public_id, "key_path": True})
    sentry_sdk.capture_message(message, level="warning")
    return run


def discrepancy_resolve(*, discrepancy_id: int, decision: str, reason: str, by: str) -> Discrepancy:
    """Ops' or finance's decision on a discrepancy: accept, refund or write off, with a reason, recorded with
    who decided and when. "refund" requests a full refund of the order's amount through
    ``payments.services.refund_request`` when the order is paid (the channel moves the money; the refund
    has its own task and retries); otherwise the decision is recorded for finance to act on."""
    if decision not in Discrepancy.Decision.values:
        raise ValueError(f"decision must be one of {', '.join(Discrepancy.Decision.values)}")
    if not reason.strip():
        raise ValueError("a decision needs a reason")
    with transaction.atomic():
        d = Discrepancy.objects.select_for_update().get(pk=discrepancy_id)
        if d.status in (DStatus.RESOLVED, DStatus.AUTO_RESOLVED):
            return d  # decided already (a double click, a repeated request)
    note = reason.strip()
    if decision == Discrepancy.Decision.REFUND and d.order_id is not None:
        order = Order.objects.get(pk=d.order_id)
        if order.status in matching.PAID_STATES:
            refund, _ = payment_services.refund_request(
                order_id=order.pk, merchant_refund_no=f"recon-{d.pk}", amount=order.amount - order.amount_refunded,
                reason=f"reconciliation: {note}"[:127],
            )
            note = f"{note} (refund {refund.public_id})"
    with transaction.atomic():
        d = Discrepancy.objects.select_for_update().get(pk=discrepancy_id)
        d.status, d.decision, d.resolution = DStatus.RESOLVED, decision, note[:255]
        d.resolved_by, d.resolved_at = by[:150], timezone.now()
        d.save(update_fields=["status", "decision", "resolution", "resolved_by", "resolved_at"])
    log.warning("reconciliation discrepancy %s %s decided %s by %s", d.kind, d.out_trade_no, decision, by,
                extra={"order_id": d.out_trade_no, "key_path": True})
    return d
