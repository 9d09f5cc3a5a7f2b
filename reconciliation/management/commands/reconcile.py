"""``manage.py reconcile --channel alipay --date 2026-12-04``: one run by hand, with progress, then its summary.

Any date the channel serves a bill for, today included (the simulators serve today's bill so far). Each call
adds a version of that date; earlier versions are kept."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from channels.base import BillNotReady
from channels.registry import accounts, available_channels
from reconciliation import selectors, services


class Command(BaseCommand):
    help = "Reconcile one channel's bill of one business date now, and print the summary."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--channel", required=True)
        parser.add_argument("--date", help="YYYY-MM-DD in the channel's zone (default: its previous day)")
        parser.add_argument("--account", help="one account of the channel (default: each configured account)")

    def handle(self, *args: Any, channel: str, date: str | None, account: str | None, **options: Any) -> None:
        if channel not in available_channels():
            raise CommandError(f"channel {channel!r} is not configured here ({', '.join(available_channels())})")
        try:
            day = dt.date.fromisoformat(date) if date else services.previous_business_date(channel=channel)
        except ValueError:
            raise CommandError("--date must be YYYY-MM-DD") from None
        configured = [adapter.account for adapter in accounts(channel)]
        if account is not None and account not in configured:
            raise CommandError(f"{channel} has no account {account!r} here ({', '.join(configured)})")
        for each in [account] if account else configured:
            self.reconcile(channel, each, day)

    def reconcile(self, channel: str, account: str, day: dt.date) -> None:
        run = services.run_create(channel=channel, account=account, business_date=day, triggered_by="command")
        self.stdout.write(f"run {run.public_id}: {channel} ({account}) {day} version {run.version}")
        try:
            run = services.run_execute(run_id=run.pk, progress=lambda line: self.stdout.write(f"  {line}"))
        except BillNotReady as exc:
            services.run_fail(run_id=run.pk, error=f"bill not ready: {exc.code}")
            raise CommandError(f"the {channel} bill of {day} is not ready yet ({exc.code})") from None
        summary = selectors.run_json(run)
        d = summary["discrepancies"]
        self.stdout.write(
            f"{summary['status']}: {summary['bill_rows']} bill rows, {d['total']} discrepancies "
            f"({d['unresolved']} unresolved), fingerprints {'equal' if summary['fingerprints']['equal'] else 'differ'}"
        )
        self.stdout.write(json.dumps(summary, indent=2))
