"""Prometheus metrics of reconciliation (the alert rules in docker/prometheus/alerts.yml use them).

Recorded by the nightly run when it stores a discrepancy: ``DISCREPANCIES.labels(channel=…, kind=…).inc()``,
``kind`` as in the report (missing_internal, missing_channel, amount_mismatch, status_mismatch).
"""

from __future__ import annotations

from prometheus_client import Counter

DISCREPANCIES = Counter(
    "payments_reconciliation_discrepancies", "Discrepancies found by reconciliation, by channel and kind.",
    ["channel", "kind"],
)
