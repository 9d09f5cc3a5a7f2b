"""Reconciliation tasks (queue ``reconciliation``): thin, taking ids or a channel and a date.

``reconcile_channel`` is what beat starts each day per channel. A bill that is not ready yet is asked for
again with a doubling delay (RECONCILIATION_RETRY_S up to RECONCILIATION_RETRY_MAX_S) for as long as
RECONCILIATION_NOT_READY_GIVE_UP_S; then the run fails, which logs a WARNING and goes to Sentry.
"""

from __future__ import annotations

import datetime as dt

from celery import Task, shared_task
from django.conf import settings
from django.utils import timezone

from channels.base import BillNotReady, Retryable, UnknownOutcome
from channels.registry import accounts, available_channels
from reconciliation import services
from reconciliation.models import Run


@shared_task(bind=True, max_retries=None, acks_late=True, soft_time_limit=3600, time_limit=3900)
def run_reconciliation(self: Task, run_id: int) -> None:
    """Execute one run; safe to run twice (a finished run is left as it is)."""
    try:
        services.run_execute(run_id=run_id)
    except (BillNotReady, Retryable, UnknownOutcome) as exc:
        run = Run.objects.get(pk=run_id)
        waited = (timezone.now() - (run.started_at or run.created_at)).total_seconds()
        if waited >= settings.RECONCILIATION_NOT_READY_GIVE_UP_S:
            if isinstance(exc, BillNotReady) and exc.code == "bill_not_found":
                # WeChat Pay makes no bill for a day without trades: by now it is an empty bill, and matching
                # it against our books tells whether we had any.
                services.run_reconcile(run_id=run_id, rows=())
                return
            services.run_fail(run_id=run_id, error=f"no bill after {waited / 3600:.1f} h: {exc.code}")
            return
        delay = min(settings.RECONCILIATION_RETRY_S * 2 ** min(self.request.retries, 10),
                    settings.RECONCILIATION_RETRY_MAX_S)
        raise self.retry(exc=exc, countdown=delay) from None


@shared_task
def reconcile_channel(channel: str, business_date: str | None = None) -> None:
    """Beat's daily entry: a new run of the channel's previous business day (or ``business_date``), one for each
    of its accounts (a backup account has its own bill)."""
    if channel not in available_channels():
        return  # not configured on this deployment
    day = dt.date.fromisoformat(business_date) if business_date else services.previous_business_date(channel=channel)
    for adapter in accounts(channel):
        run = services.run_create(channel=channel, account=adapter.account, business_date=day, triggered_by="beat")
        run_reconciliation.delay(run.pk)
