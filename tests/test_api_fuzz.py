"""schemathesis against the published schema (issue 12): every check, the stateful phase on, a time budget.

The API is pytest-django's live server on the test database, with the sandbox simulator as the channel (closing
an order asks it). Paid orders are made beforehand through the services (no worker runs here) and given to
schemathesis as the example ``order_id`` of refund create, so that refunds succeed; the stateful phase follows
the schema's links create → get / close / refunds. The run must answer no 5xx, nothing the schema does not
document, and at least one successful create, get, refund and close. A summary is printed (pytest -s shows it).
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from payments import services
from tests.e2e.conftest import ROOT, _stop, channel_settings, start_simulator

MAX_TIME_S = 60
CONFIG = """
[checks.positive_data_acceptance]
# Schema-valid data the API may still refuse for reasons a schema cannot express: a duplicate merchant number or
# an order in the wrong state (409), a refund over what is left of the order (422).
expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
# A list's cursor can be well formed and still not an id of that list (400 parameter_invalid, API.md).
include-operation-id-regex = "_list$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "429"]

[[operations]]
# schemathesis 4.32.5 crashes in its coverage phase on this operation (a CPython 3.11 "AST constructor recursion
# depth mismatch" inside the tool, not a finding about the API): every other phase still runs on it.
include-operation-id = "events_redeliver"
phases.coverage.enabled = false
"""
OPERATIONS = {  # operation: (method, path regex)
    "orders_create": ("POST", r"/api/v1/orders$"),
    "orders_list": ("GET", r"/api/v1/orders$"),
    "orders_get": ("GET", r"/api/v1/orders/ord_[^/]+$"),
    "orders_close": ("POST", r"/api/v1/orders/ord_[^/]+/close$"),
    "refunds_create": ("POST", r"/api/v1/orders/ord_[^/]+/refunds$"),
    "refunds_get": ("GET", r"/api/v1/refunds/rfd_[^/]+$"),
}


@pytest.fixture
def sandbox(tmp_path):
    from django.conf import settings

    account = {"SANDBOX_MERCHANT_ID": settings.SANDBOX_MERCHANT_ID, "SANDBOX_SECRET": settings.SANDBOX_SECRET}
    proc, sim = start_simulator("sandbox", account, tmp_path)
    try:
        with channel_settings({"SANDBOX_API_BASE": sim.base_url}):
            yield sim
    finally:
        _stop(proc)


def paid_orders(merchant, count: int) -> list[str]:
    from channels.base import TradeResult, TradeStatus

    ids = []
    for i in range(count):
        order, _ = services.order_create(merchant=merchant, merchant_order_no=f"FUZZ-PAID-{i}", amount=100_000,
                                         currency="CNY", channel="sandbox")
        trade = TradeResult(out_trade_no=order.public_id, status=TradeStatus.SUCCEEDED, amount=order.amount,
                            currency=order.currency, channel_trade_no=f"t{i}")
        ids.append(services.order_apply_trade(order_id=order.pk, trade=trade, source="worker").public_id)
    return ids


def summary(har: dict) -> tuple[collections.Counter, collections.Counter]:
    statuses: collections.Counter = collections.Counter()
    succeeded: collections.Counter = collections.Counter()
    for entry in har["log"]["entries"]:
        method, url, status = entry["request"]["method"], entry["request"]["url"], entry["response"]["status"]
        statuses[status] += 1
        path = httpx.URL(url).path
        for name, (op_method, pattern) in OPERATIONS.items():
            if method == op_method and re.search(pattern, path) and 200 <= status < 300:
                succeeded[name] += 1
    return statuses, succeeded


@pytest.mark.django_db(transaction=True)
def test_schemathesis_finds_nothing(live_server, sandbox, tmp_path) -> None:
    merchant, key = services.merchant_create(name="Fuzz")
    merchant.rate_limit_per_s = 100_000  # the fuzzer may go faster than a merchant's default limit
    merchant.save(update_fields=["rate_limit_per_s"])
    schema = httpx.get(f"{live_server.url}/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"},
                       timeout=30).json()
    # The paid orders, as the examples of refund create's order_id: refunds of them succeed.
    refund_create = schema["paths"]["/api/v1/orders/{order_id}/refunds"]["post"]
    for parameter in refund_create["parameters"]:
        if parameter["name"] == "order_id":
            parameter["examples"] = {f"paid{i}": {"value": order_id}
                                     for i, order_id in enumerate(paid_orders(merchant, 3))}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    har_path = tmp_path / "run.har"
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(tmp_path / "schemathesis.toml"),
        "run", str(tmp_path / "schema.json"), "--url", live_server.url,
        "-H", f"Authorization: Bearer {key}", "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", "15", "--max-time", str(MAX_TIME_S),
        # One worker: schemathesis's threads parse source with ast at once, which CPython 3.11 can fail at
        # ("SystemError: AST constructor recursion depth mismatch", python/cpython#106905), ending the run.
        "--workers", "1", "--seed", "12", "--generation-database", "none", "--no-color",
        "--report", "har", "--report-har-path", str(har_path),
        # Only the merchant API and the ops endpoints: the callbacks speak the channels' protocols (their own tests
        # feed them garbage), and a merchant key on reconciliation is a documented 403 (tested elsewhere).
        "--exclude-path-regex", "^/(callbacks|api/v1/reconciliation)",
    ]
    hooks = {"SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"}  # what OpenAPI 3.0 cannot say of metadata keys
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=MAX_TIME_S + 120,
                         env={**os.environ, **hooks})
    (tmp_path / "schemathesis.out").write_text(run.stdout + run.stderr)
    statuses, succeeded = summary(json.loads(har_path.read_text()))
    print(f"\nschemathesis: {sum(statuses.values())} requests; statuses {dict(sorted(statuses.items()))}; "
          f"succeeded {dict(succeeded)}")
    # Any failure of a check, and any error of schemathesis itself, is a non-zero exit.
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert not [status for status in statuses if status >= 500]
    assert all(succeeded[name] for name in ("orders_create", "orders_get", "refunds_create", "orders_close")), succeeded
