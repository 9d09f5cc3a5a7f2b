"""Reads of reconciliation runs, for the API and the admin."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, QuerySet

from reconciliation.models import Discrepancy, Run


def runs_with_counts() -> QuerySet[Run]:
    unresolved = Q(discrepancies__status__in=[Discrepancy.Status.OPEN, Discrepancy.Status.CARRY_OVER])
    return Run.objects.annotate(
        discrepancy_total=Count("discrepancies"), unresolved_total=Count("discrepancies", filter=unresolved),
    )


def run_json(run: Run) -> dict[str, Any]:
    by_kind = dict(run.discrepancies.values_list("kind").annotate(n=Count("id")).values_list("kind", "n"))
    by_status = dict(run.discrepancies.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    return {
        "id": run.public_id, "object": "reconciliation_run", "channel": run.channel,
        "account": run.account,
        "business_date": run.business_date.isoformat(), "timezone": run.timezone, "version": run.version,
        "status": run.status, "error": run.error or None, "bill_rows": run.bill_rows, "totals": run.totals,
        "fingerprints": {"channel": run.channel_fingerprint or None, "internal": run.internal_fingerprint or None,
                         "equal": run.fingerprints_equal},
        "discrepancies": {"total": sum(by_kind.values()), "by_kind": by_kind, "by_status": by_status,
                          "unresolved": by_status.get("open", 0) + by_status.get("carry_over", 0)},
        "created_at": rfc3339(run.created_at), "started_at": rfc3339(run.started_at),
        "finished_at": rfc3339(run.finished_at),
    }


def rfc3339(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None
