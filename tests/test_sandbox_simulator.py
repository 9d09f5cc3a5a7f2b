"""The sandbox channel simulator against PROTOCOL.md and SIMULATORS.md.

No Django, no database: these tests import only `channels.*`, start the simulator in-process on a free port and
talk to it over HTTP with httpx. Run: `python -m pytest tests/test_sandbox_simulator.py -p no:django -q`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels.sandbox.signing import sign_message, sign_request
from channels.sandbox.simulator import SandboxSimulator

MERCHANT, SECRET = "sbx_m_test", "test-secret"


@pytest.fixture(scope="module")
def sim() -> Iterator[SandboxSimulator]:
    with SandboxSimulator({MERCHANT: SECRET}, port=0) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def _reset(sim: SandboxSimulator) -> None:
    assert httpx.post(f"{sim.base_url}/_sim/reset").status_code == 200


def call(
    sim: SandboxSimulator,
    method: str,
    path: str,
    body: Any = None,
    *,
    merchant: str = MERCHANT,
    secret: str = SECRET,
    timestamp: int | None = None,
    drop: str | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    raw = json.dumps(body).encode() if body is not None else b""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "Content-Type": "application/json",
        "X-Sandbox-Merchant": merchant,
        "X-Sandbox-Timestamp": ts,
        "X-Sandbox-Signature": sign_request(secret, ts, method, path, raw),
    }
    if drop:
        del headers[drop]
    return httpx.request(method, sim.base_url + path, content=raw, headers=headers, timeout=timeout)


def signed_by(response: httpx.Response, secret: str = SECRET) -> bool:
    ts = response.headers.get("X-Sandbox-Timestamp", "")
    return bool(response.headers.get("X-Sandbox-Signature") == sign_message(secret, ts, response.content))


def create(
    sim: SandboxSimulator, no: str, amount: int = 100, notify_url: str | None = None, **kw: Any
) -> httpx.Response:
    body = {
        "out_trade_no": no,
        "amount": amount,
        "currency": "CNY",
        "description": "tea",
        "notify_url": notify_url,
        **kw,
    }
    return call(sim, "POST", "/v1/trades", body)


def pay(sim: SandboxSimulator, no: str, action: str = "pay") -> httpx.Response:
    return httpx.post(f"{sim.base_url}/pay/{no}", data={"action": action})


def sim_trade(sim: SandboxSimulator, no: str) -> dict[str, Any]:
    snapshot: dict[str, Any] = httpx.get(f"{sim.base_url}/_sim/trades/{no}").json()
    return snapshot


def arm(sim: SandboxSimulator, **fault: Any) -> None:
    assert httpx.post(f"{sim.base_url}/_sim/faults", json=fault).status_code == 200


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


class Receiver:
    """A tiny notify_url: records what arrives and answers with the queued statuses (then 200)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append((dict(self.headers.items()), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]

    def valid(self, index: int) -> bool:
        headers, body = self.received[index]
        return headers["X-Sandbox-Signature"] == sign_message(SECRET, headers["X-Sandbox-Timestamp"], body)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


# -- signatures ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        {"secret": "wrong"},
        {"drop": "X-Sandbox-Signature"},
        {"timestamp": int(time.time()) - 301},
        {"merchant": "sbx_m_nobody"},
    ],
    ids=["wrong-secret", "missing-header", "stale-timestamp", "unknown-merchant"],
)
def test_bad_signatures_are_rejected_unsigned(sim: SandboxSimulator, kw: dict[str, Any]) -> None:
    r = call(sim, "POST", "/v1/trades", {"out_trade_no": "o1", "amount": 100, "currency": "CNY"}, **kw)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "SIGNATURE_INVALID"
    assert isinstance(r.json()["error"]["message"], str)
    assert "X-Sandbox-Signature" not in r.headers
    assert sim_trade(sim, "o1")["create_calls"] == 0  # counted only after the signature verified


# -- create, query, dedupe -----------------------------------------------------------------------------------


def test_create_dedupes_and_refuses_a_different_amount(sim: SandboxSimulator) -> None:
    first = create(sim, "o1")
    assert first.status_code == 200 and signed_by(first)
    trade = first.json()
    assert trade["status"] == "WAITING" and trade["trade_no"].startswith("sbx_t_")
    assert trade["pay_url"] == f"{sim.public_base_url}/pay/o1"
    assert create(sim, "o1").json()["trade_no"] == trade["trade_no"]
    conflict = create(sim, "o1", amount=101)
    assert (
        conflict.status_code == 409 and conflict.json()["error"]["code"] == "OUT_TRADE_NO_USED" and signed_by(conflict)
    )
    assert sim_trade(sim, "o1")["create_calls"] == 3
    query = call(sim, "GET", "/v1/trades/o1")
    assert query.status_code == 200 and query.json() == trade
    missing = call(sim, "GET", "/v1/trades/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "TRADE_NOT_FOUND"


@pytest.mark.parametrize("body", [{"amount": 0}, {"amount": "1"}, {"currency": "GBP"}, {"out_trade_no": ""}])
def test_create_rejects_bad_input(sim: SandboxSimulator, body: dict[str, Any]) -> None:
    r = call(sim, "POST", "/v1/trades", {"out_trade_no": "o1", "amount": 100, "currency": "JPY", **body})
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_REQUEST"


def test_create_calls_count_requests_answered_with_http_500(sim: SandboxSimulator) -> None:
    arm(sim, operation="create", mode="http_500", count=2)
    for _ in range(2):
        r = create(sim, "o1")
        assert r.status_code == 500 and r.json()["error"]["code"] == "SYSTEM_ERROR" and signed_by(r)
    assert httpx.get(f"{sim.base_url}/_sim/trades/o1").status_code == 404  # a 500 does no work
    assert create(sim, "o1").status_code == 200
    assert sim_trade(sim, "o1")["create_calls"] == 3


def test_refuse_rate_limit_and_latency_faults(sim: SandboxSimulator) -> None:
    arm(sim, operation="*", mode="refuse", count=1)
    arm(sim, operation="query", mode="rate_limit", count=1)
    arm(sim, operation="query", mode="latency", latency_ms=300, count=1)
    r = create(sim, "o1")
    assert r.status_code == 403 and r.json()["error"]["code"] == "REFUSED"
    assert create(sim, "o1").status_code == 200
    started = time.monotonic()
    r = call(sim, "GET", "/v1/trades/o1")  # latency and rate_limit both apply: slow, then 429
    assert time.monotonic() - started >= 0.3
    assert r.status_code == 429 and r.json()["error"]["code"] == "RATE_LIMITED" and r.headers["Retry-After"]
    assert call(sim, "GET", "/v1/trades/o1").status_code == 200


def test_timeout_after_processing_commits_then_never_answers(sim: SandboxSimulator) -> None:
    arm(sim, operation="create", mode="timeout_after_processing", count=1)
    with pytest.raises(httpx.ReadTimeout):
        call(sim, "POST", "/v1/trades", {"out_trade_no": "o1", "amount": 100, "currency": "CNY"}, timeout=1.0)
    query = call(sim, "GET", "/v1/trades/o1")
    assert query.status_code == 200 and query.json()["status"] == "WAITING"
    assert create(sim, "o1").json()["trade_no"] == query.json()["trade_no"]
    assert sim_trade(sim, "o1")["create_calls"] == 2


# -- the payer and notifications ------------------------------------------------------------------------------


def test_payer_page_and_paid_notification(sim: SandboxSimulator, receiver: Receiver) -> None:
    create(sim, "o1", amount=1234, notify_url=receiver.url)
    page = httpx.get(f"{sim.base_url}/pay/o1")
    assert page.status_code == 200 and "12.34 CNY" in page.text and 'value="pay"' in page.text
    assert pay(sim, "o1", "fail").status_code == 200
    assert call(sim, "GET", "/v1/trades/o1").json()["status"] == "WAITING"
    assert receiver.received == []
    assert pay(sim, "o1").status_code == 200
    wait_until(lambda: len(receiver.received) == 1)
    assert receiver.valid(0)
    message = receiver.messages()[0]
    assert message["id"].startswith("sbx_n_") and message["type"] == "trade.succeeded"
    assert message["data"]["status"] == "SUCCEEDED" and message["data"]["amount"] == 1234
    wait_until(lambda: [n["acknowledged"] for n in sim_trade(sim, "o1")["notifications"]] == [True])
    snapshot = sim_trade(sim, "o1")
    assert snapshot["status"] == "SUCCEEDED" and snapshot["paid_at"] and len(snapshot["notifications"]) == 1


def test_unacknowledged_notification_is_retried_with_the_same_id(sim: SandboxSimulator, receiver: Receiver) -> None:
    httpx.post(f"{sim.base_url}/_sim/clock", json={"speed": 1000})
    receiver.statuses = [500, 404]
    create(sim, "o1", notify_url=receiver.url)
    pay(sim, "o1")
    wait_until(lambda: len(receiver.received) == 3)
    assert len({m["id"] for m in receiver.messages()}) == 1
    wait_until(lambda: len(sim_trade(sim, "o1")["notifications"]) == 3)
    assert [n["acknowledged"] for n in sim_trade(sim, "o1")["notifications"]] == [False, False, True]
    time.sleep(0.2)
    assert len(receiver.received) == 3  # acknowledged: no more attempts


def test_receiver_down_does_not_block_the_simulator(sim: SandboxSimulator) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}/notify"  # nothing listens once closed
    httpx.post(f"{sim.base_url}/_sim/clock", json={"speed": 100_000})
    create(sim, "o1", notify_url=dead_url)
    pay(sim, "o1")
    wait_until(lambda: len(sim_trade(sim, "o1")["notifications"]) == 9)  # first try + 8 retries, then given up
    assert not any(n["acknowledged"] for n in sim_trade(sim, "o1")["notifications"])
    assert create(sim, "o2").status_code == 200


def test_duplicate_bad_signature_and_tampered_notifications(sim: SandboxSimulator, receiver: Receiver) -> None:
    arm(sim, operation="notify", mode="duplicate_notify", count=1)
    arm(sim, operation="notify", mode="bad_signature_notify", count=1)
    arm(sim, operation="notify", mode="tamper_amount_notify", count=1)
    for no in ("o1", "o2", "o3"):
        create(sim, no, amount=500, notify_url=receiver.url)
        pay(sim, no)

        def arrived(no: str = no) -> bool:
            return bool(receiver.received) and receiver.messages()[-1]["data"]["out_trade_no"] == no

        wait_until(arrived)  # one at a time, so that each armed fault lands on its own trade
    wait_until(lambda: len(receiver.received) == 4)
    messages = receiver.messages()
    assert messages[0] == messages[1] and receiver.valid(0) and receiver.valid(1)  # duplicate: same id twice
    assert messages[2]["data"]["out_trade_no"] == "o2" and not receiver.valid(2)  # bad signature
    assert messages[3]["data"]["amount"] == 501 and receiver.valid(3)  # tampered, yet correctly signed


def test_dropped_notification_arrives_on_retry(sim: SandboxSimulator, receiver: Receiver) -> None:
    httpx.post(f"{sim.base_url}/_sim/clock", json={"speed": 1000})
    arm(sim, operation="notify", mode="drop_notify", count=1)
    create(sim, "o1", notify_url=receiver.url)
    pay(sim, "o1")
    wait_until(lambda: len(receiver.received) == 1)
    wait_until(lambda: [n["acknowledged"] for n in sim_trade(sim, "o1")["notifications"]] == [False, True])


def test_out_of_order_notification_arrives_after_the_next_one(sim: SandboxSimulator, receiver: Receiver) -> None:
    arm(sim, operation="notify", mode="out_of_order_notify", count=1)
    for no in ("o1", "o2"):
        create(sim, no, notify_url=receiver.url)
        pay(sim, no)
    wait_until(lambda: len(receiver.received) == 2)
    assert [m["data"]["out_trade_no"] for m in receiver.messages()] == ["o2", "o1"]
    # With no successor, a held notification goes after ~2 simulated seconds.
    arm(sim, operation="notify", mode="out_of_order_notify", count=1)
    httpx.post(f"{sim.base_url}/_sim/clock", json={"speed": 1000})
    create(sim, "o3", notify_url=receiver.url)
    pay(sim, "o3")
    wait_until(lambda: len(receiver.received) == 3)


# -- refunds, close, bills ------------------------------------------------------------------------------------


def test_refunds(sim: SandboxSimulator, receiver: Receiver) -> None:
    create(sim, "o1", amount=100, notify_url=receiver.url)
    not_paid = call(sim, "POST", "/v1/refunds", {"out_trade_no": "o1", "out_refund_no": "r1", "amount": 10})
    assert not_paid.status_code == 409 and not_paid.json()["error"]["code"] == "TRADE_NOT_PAID"
    pay(sim, "o1")
    refund = call(
        sim, "POST", "/v1/refunds", {"out_trade_no": "o1", "out_refund_no": "r1", "amount": 60, "reason": "x"}
    )
    assert refund.status_code == 200 and signed_by(refund)
    assert refund.json()["status"] == "SUCCEEDED" and refund.json()["refund_no"].startswith("sbx_r_")
    again = call(sim, "POST", "/v1/refunds", {"out_trade_no": "o1", "out_refund_no": "r1", "amount": 60})
    assert again.json()["refund_no"] == refund.json()["refund_no"]
    other = call(sim, "POST", "/v1/refunds", {"out_trade_no": "o1", "out_refund_no": "r1", "amount": 61})
    assert other.status_code == 409 and other.json()["error"]["code"] == "OUT_REFUND_NO_USED"
    over = call(sim, "POST", "/v1/refunds", {"out_trade_no": "o1", "out_refund_no": "r2", "amount": 41})
    assert over.status_code == 422 and over.json()["error"]["code"] == "REFUND_EXCEEDS_AMOUNT"
    assert call(sim, "GET", "/v1/refunds/r1").json() == refund.json()
    assert call(sim, "GET", "/v1/refunds/r2").json()["error"]["code"] == "REFUND_NOT_FOUND"
    assert sim_trade(sim, "o1")["refunds"] == [{"out_refund_no": "r1", "amount": 60, "status": "SUCCEEDED"}]
    wait_until(lambda: len(receiver.received) == 2)
    assert receiver.messages()[1]["type"] == "refund.succeeded" and receiver.messages()[1]["data"]["amount"] == 60


def test_close(sim: SandboxSimulator) -> None:
    create(sim, "o1")
    closed = call(sim, "POST", "/v1/trades/o1/close")
    assert closed.status_code == 200 and closed.json()["status"] == "CLOSED" and closed.json()["closed_at"]
    assert call(sim, "POST", "/v1/trades/o1/close").status_code == 200
    assert pay(sim, "o1").status_code == 409
    refund = call(sim, "POST", "/v1/refunds", {"out_trade_no": "o1", "out_refund_no": "r1", "amount": 1})
    assert refund.json()["error"]["code"] == "TRADE_CLOSED"
    create(sim, "o2")
    pay(sim, "o2")
    paid = call(sim, "POST", "/v1/trades/o2/close")
    assert paid.status_code == 409 and paid.json()["error"]["code"] == "TRADE_PAID"


def test_bill_csv_with_adjustments(sim: SandboxSimulator) -> None:
    for no, amount in (("o1", 100), ("o2", 200), ("o3", 300)):
        create(sim, no, amount=amount)
        pay(sim, no)
    create(sim, "o4")  # unpaid: not on the bill
    call(sim, "POST", "/v1/refunds", {"out_trade_no": "o1", "out_refund_no": "r1", "amount": 40})
    today = time.strftime("%Y-%m-%d", time.gmtime())
    adjust = {
        "drop": ["o2"],
        "amount": {"o3": 299},
        "add": [{"out_trade_no": "ghost", "amount": 7, "status": "SUCCEEDED"}],
    }
    assert httpx.post(f"{sim.base_url}/_sim/bills/{today}/adjust", json=adjust).status_code == 200
    bill = call(sim, "GET", f"/v1/bills/{today}")
    assert bill.status_code == 200 and bill.headers["Content-Type"].startswith("text/csv") and signed_by(bill)
    assert (
        bill.text.splitlines()[0]
        == "type,out_trade_no,trade_no,out_refund_no,refund_no,amount,currency,status,completed_at"
    )
    rows = {(r["type"], r["out_trade_no"]): r for r in csv.DictReader(io.StringIO(bill.text))}
    assert sorted(rows) == [("payment", "ghost"), ("payment", "o1"), ("payment", "o3"), ("refund", "o1")]
    assert rows["payment", "o1"]["amount"] == "100" and rows["payment", "o3"]["amount"] == "299"
    assert rows["refund", "o1"]["out_refund_no"] == "r1" and rows["refund", "o1"]["amount"] == "40"
    assert call(sim, "GET", "/v1/bills/2001-01-01").text.count("\n") == 1  # header only
    assert call(sim, "GET", "/v1/bills/yesterday").json()["error"]["code"] == "INVALID_REQUEST"


# -- control endpoints ----------------------------------------------------------------------------------------


def test_reset_forgets_everything_but_accounts(sim: SandboxSimulator) -> None:
    opened = httpx.post(f"{sim.base_url}/_sim/accounts").json()
    assert opened["merchant_id"].startswith("sbx_m_") and opened["secret"]
    create(sim, "o1")
    arm(sim, operation="*", mode="http_500")
    assert httpx.post(f"{sim.base_url}/_sim/reset").status_code == 200
    assert httpx.get(f"{sim.base_url}/_sim/trades/o1").status_code == 404
    assert httpx.get(f"{sim.base_url}/_sim/faults").json() == {"faults": []}
    assert create(sim, "o1").status_code == 200
    r = call(
        sim,
        "POST",
        "/v1/trades",
        {"out_trade_no": "o9", "amount": 5, "currency": "USD"},
        merchant=opened["merchant_id"],
        secret=opened["secret"],
    )
    assert r.status_code == 200 and signed_by(r, opened["secret"])
    assert call(sim, "GET", "/v1/trades/o1", merchant=opened["merchant_id"], secret=opened["secret"]).status_code == 404


def test_bad_fault_is_rejected(sim: SandboxSimulator) -> None:
    assert (
        httpx.post(f"{sim.base_url}/_sim/faults", json={"operation": "create", "mode": "drop_notify"}).status_code
        == 400
    )
    assert httpx.post(f"{sim.base_url}/_sim/faults", json={"operation": "pay", "mode": "refuse"}).status_code == 400


def test_runs_as_a_process_and_stops_on_sigterm() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "channels.sandbox.simulator", "--port", str(port)],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == f"sandbox simulator listening on http://127.0.0.1:{port}"
        assert httpx.get(f"http://127.0.0.1:{port}/_sim/faults").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
