"""Prometheus metrics of reconciliation (the alert rules in docker/prometheus/alerts.yml use them).

Recorded when a run finishes: ``DISCREPANCIES.labels(channel=…, kind=…).inc()`` once per discrepancy found
(``kind`` as in the report: missing_internal, missing_channel, amount_mismatch, status_mismatch, duplicate),
and ``RUNS`` once per run by outcome (succeeded, failed).
"""

from __future__ import annotations

from prometheus_client import Counter

DISCREPANCIES = Counter(
    "payments_reconciliation_discrepancies", "Discrepancies found by reconciliation, by channel and kind.",
    ["channel", "kind"],
)
RUNS = Counter(
    "payments_reconciliation_runs", "Reconciliation runs finished, by channel and outcome.", ["channel", "outcome"],
)
