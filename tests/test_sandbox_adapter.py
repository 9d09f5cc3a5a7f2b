"""The sandbox adapter's outcome kinds, against the in-process simulator (and a liar at the network edge)."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from channels.base import RefundStatus, Refused, Retryable, TradeStatus, UnknownOutcome
from channels.http import Timeouts
from channels.sandbox.adapter import SandboxChannel
from channels.sandbox.simulator import SandboxSimulator

MERCHANT, SECRET = "sbx_m_adapter", "adapter-secret"
EXPIRES = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def sim() -> Iterator[SandboxSimulator]:
    with SandboxSimulator({MERCHANT: SECRET}, port=0) as simulator:
        yield simulator


@pytest.fixture
def channel(sim: SandboxSimulator) -> SandboxChannel:
    httpx.post(f"{sim.base_url}/_sim/reset").raise_for_status()
    return SandboxChannel(api_base=sim.base_url, merchant_id=MERCHANT, secret=SECRET,
                          timeouts=Timeouts(connect_s=1, read_s=1, write_s=1))


def fault(sim: SandboxSimulator, operation: str, mode: str, count: int = 1) -> None:
    fault = {"operation": operation, "mode": mode, "count": count}
    httpx.post(f"{sim.base_url}/_sim/faults", json=fault).raise_for_status()


def create(channel: SandboxChannel, out_trade_no: str = "ord_adapter1", amount: int = 1050):
    return channel.create_trade(out_trade_no=out_trade_no, amount=amount, currency="CNY", description="d",
                                notify_url="http://127.0.0.1:9/callbacks/sandbox", expires_at=EXPIRES)


def test_create_query_close(channel: SandboxChannel) -> None:
    trade = create(channel)
    assert trade.status == TradeStatus.WAITING and trade.amount == 1050 and trade.pay_url
    assert channel.query_trade(out_trade_no="ord_adapter1").status == TradeStatus.WAITING
    assert channel.close_trade(out_trade_no="ord_adapter1").status == TradeStatus.CLOSED
    assert channel.query_trade(out_trade_no="ord_missing").status == TradeStatus.NOT_FOUND
    assert channel.close_trade(out_trade_no="ord_missing").status == TradeStatus.NOT_FOUND


def test_close_of_a_paid_trade_reports_it_paid(channel: SandboxChannel, sim: SandboxSimulator) -> None:
    trade = create(channel)
    httpx.post(trade.pay_url, data={"action": "pay"}).raise_for_status()
    closed = channel.close_trade(out_trade_no="ord_adapter1")
    assert closed.status == TradeStatus.SUCCEEDED and closed.paid_at is not None


def test_refunds_and_refusals(channel: SandboxChannel) -> None:
    trade = create(channel)
    with pytest.raises(Refused) as unpaid:
        channel.refund(out_trade_no="ord_adapter1", out_refund_no="rfd_1", amount=1, total_amount=1050,
                       currency="CNY", reason="")
    assert unpaid.value.code == "trade_not_paid"
    httpx.post(trade.pay_url, data={"action": "pay"}).raise_for_status()
    refund = channel.refund(out_trade_no="ord_adapter1", out_refund_no="rfd_1", amount=50, total_amount=1050,
                            currency="CNY", reason="")
    assert refund.status == RefundStatus.SUCCEEDED and refund.amount == 50
    assert channel.query_refund(out_trade_no="ord_adapter1", out_refund_no="rfd_1").status == RefundStatus.SUCCEEDED
    assert channel.query_refund(out_trade_no="ord_adapter1", out_refund_no="rfd_x").status == RefundStatus.NOT_FOUND
    with pytest.raises(Refused) as exceeds:
        channel.refund(out_trade_no="ord_adapter1", out_refund_no="rfd_2", amount=1001, total_amount=1050,
                       currency="CNY", reason="")
    assert exceeds.value.code == "refund_exceeds_amount"


@pytest.mark.parametrize(
    ("mode", "kind", "code"),
    [
        ("http_500", Retryable, "channel_system_error"),
        ("rate_limit", Retryable, "channel_rate_limited"),
        ("refuse", Refused, "channel_refused"),
        ("timeout_after_processing", UnknownOutcome, "channel_timeout"),
    ],
)
def test_faults_map_to_outcome_kinds(channel: SandboxChannel, sim: SandboxSimulator, mode, kind, code) -> None:
    fault(sim, "create", mode)
    with pytest.raises(kind) as raised:
        create(channel)
    assert type(raised.value) is kind and raised.value.code == code


def test_duplicate_out_trade_no_with_other_amount_is_refused(channel: SandboxChannel) -> None:
    create(channel)
    assert create(channel).status == TradeStatus.WAITING  # same parameters: the same trade
    with pytest.raises(Refused) as raised:
        create(channel, amount=999)
    assert raised.value.code == "duplicate_out_trade_no"


def test_wrong_key_is_retryable_not_a_refusal(sim: SandboxSimulator) -> None:
    wrong = SandboxChannel(api_base=sim.base_url, merchant_id=MERCHANT, secret="wrong", timeouts=Timeouts())
    with pytest.raises(Retryable) as raised:
        create(wrong)
    assert raised.value.code == "channel_auth_failed"


def test_unreachable_channel_is_retryable() -> None:
    down = SandboxChannel(
        api_base="http://127.0.0.1:9", merchant_id=MERCHANT, secret=SECRET, timeouts=Timeouts(connect_s=1)
    )
    with pytest.raises(Retryable) as raised:
        create(down)
    assert raised.value.code == "channel_unreachable"


class _Liar(BaseHTTPRequestHandler):
    """Answers like the sandbox but with a signature that does not match (a man in the middle)."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"object": "trade", "out_trade_no": "ord_adapter1", "trade_no": "t", "status": "SUCCEEDED",
                           "amount": 1050, "currency": "CNY"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Sandbox-Timestamp", "0")
        self.send_header("X-Sandbox-Signature", "0" * 64)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_answer_with_bad_signature_is_an_unknown_outcome() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Liar)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        liar = SandboxChannel(api_base=f"http://127.0.0.1:{server.server_port}", merchant_id=MERCHANT, secret=SECRET,
                              timeouts=Timeouts())
        with pytest.raises(UnknownOutcome) as raised:
            create(liar)
        assert raised.value.code == "bad_channel_signature"
    finally:
        server.shutdown()
