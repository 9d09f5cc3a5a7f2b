"""The WeChat Pay adapter's operations and outcome kinds, against the in-process simulator (and, for answers the
simulator never gives, a fake gateway at the network edge that signs whatever it is told to)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from channels.base import BillNotReady, ChannelError, RefundStatus, Refused, Retryable, TradeStatus, UnknownOutcome
from channels.http import Timeouts
from channels.wechatpay import signing
from channels.wechatpay.adapter import ERROR_CODES, SHANGHAI, WechatPayChannel
from channels.wechatpay.simulator import WechatPaySimulator

EXPIRES = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
NOTIFY = "http://127.0.0.1:9/callbacks/wechatpay"  # nobody listens: notifications are not the point here


@pytest.fixture(scope="module")
def sim() -> Iterator[WechatPaySimulator]:
    with WechatPaySimulator(port=0) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def account(sim: WechatPaySimulator) -> dict[str, str]:
    return httpx.post(f"{sim.base_url}/_sim/accounts", json={}).json()


def make_channel(base_url: str, account: dict[str, str], **changes: str) -> WechatPayChannel:
    names = ("mchid", "appid", "merchant_private_key", "merchant_serial_no", "apiv3_key", "platform_public_key",
             "platform_public_key_id")
    config = {**{name: account[name] for name in names}, **changes}
    return WechatPayChannel(api_base=base_url, notify_url=NOTIFY, timeouts=Timeouts(connect_s=1, read_s=1, write_s=1),
                            **config)


@pytest.fixture
def channel(sim: WechatPaySimulator, account: dict[str, str]) -> WechatPayChannel:
    httpx.post(f"{sim.base_url}/_sim/reset").raise_for_status()
    httpx.post(f"{sim.base_url}/_sim/clock", json={"speed": 1000}).raise_for_status()  # refunds settle at once
    return make_channel(sim.base_url, account)


def fault(sim: WechatPaySimulator, operation: str, mode: str, count: int = 1) -> None:
    httpx.post(f"{sim.base_url}/_sim/faults", json={"operation": operation, "mode": mode, "count": count}
               ).raise_for_status()


def trade_of(sim: WechatPaySimulator, out_trade_no: str) -> dict[str, Any]:
    return httpx.get(f"{sim.base_url}/_sim/trades/{out_trade_no}").json()


def create(channel: WechatPayChannel, out_trade_no: str = "ord_wx_adapter1", amount: int = 1050, **extra: Any):
    return channel.create_trade(**{"out_trade_no": out_trade_no, "amount": amount, "currency": "CNY",
                                   "description": "Coffee", "notify_url": NOTIFY, "expires_at": EXPIRES, **extra})


def pay(pay_url: str, action: str = "pay") -> None:
    httpx.post(pay_url, data={"action": action}).raise_for_status()


def paid_trade(channel: WechatPayChannel, out_trade_no: str = "ord_wx_adapter1", amount: int = 1050) -> None:
    pay(create(channel, out_trade_no, amount).pay_url or "")


def refund(channel: WechatPayChannel, out_refund_no: str = "rfd_wx_1", amount: int = 500, total: int = 1050,
           out_trade_no: str = "ord_wx_adapter1"):
    return channel.refund(out_trade_no=out_trade_no, out_refund_no=out_refund_no, amount=amount, total_amount=total,
                          currency="CNY", reason="damaged")


def wait_for(check: Callable[[], Any], timeout_s: float = 5) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return result


# -- operations ----------------------------------------------------------------------------------------------


def test_create_query_close(channel: WechatPayChannel, sim: WechatPaySimulator) -> None:
    trade = create(channel)
    assert trade.status == TradeStatus.WAITING and trade.amount == 1050
    assert trade.pay_url and trade.pay_url.startswith(f"{sim.base_url}/wxpay/bizpayurl?pr=")
    queried = channel.query_trade(out_trade_no="ord_wx_adapter1")
    assert (queried.status, queried.amount, queried.currency) == (TradeStatus.WAITING, 1050, "CNY")
    assert channel.close_trade(out_trade_no="ord_wx_adapter1").status == TradeStatus.CLOSED
    assert channel.close_trade(out_trade_no="ord_wx_adapter1").status == TradeStatus.CLOSED  # ORDER_CLOSED: fine
    assert channel.query_trade(out_trade_no="ord_wx_missing").status == TradeStatus.NOT_FOUND
    assert channel.close_trade(out_trade_no="ord_wx_missing").status == TradeStatus.NOT_FOUND
    assert httpx.post(trade.pay_url, data={"action": "pay"}).status_code == 409


def test_the_same_create_is_the_same_trade(channel: WechatPayChannel, sim: WechatPaySimulator) -> None:
    first, again = create(channel), create(channel)
    assert first.pay_url == again.pay_url
    assert trade_of(sim, "ord_wx_adapter1")["create_calls"] == 2
    with pytest.raises(Refused) as raised:
        create(channel, amount=999)
    assert raised.value.code == "duplicate_out_trade_no"


def test_payment_is_seen_by_query_and_close(channel: WechatPayChannel) -> None:
    paid_trade(channel)
    queried = channel.query_trade(out_trade_no="ord_wx_adapter1")
    assert queried.status == TradeStatus.SUCCEEDED and queried.channel_trade_no and queried.paid_at
    assert queried.paid_at.utcoffset() == dt.timedelta(hours=8)
    closed = channel.close_trade(out_trade_no="ord_wx_adapter1")  # 403 TRADE_ERROR, then the query
    assert closed.status == TradeStatus.SUCCEEDED and closed.channel_trade_no == queried.channel_trade_no


def test_refund_is_processing_then_succeeds(channel: WechatPayChannel) -> None:
    paid_trade(channel)
    accepted = refund(channel)
    assert (accepted.status, accepted.amount, accepted.currency) == (RefundStatus.PROCESSING, 500, "CNY")
    assert accepted.channel_refund_no
    done = wait_for(lambda: (r := channel.query_refund(out_trade_no="ord_wx_adapter1", out_refund_no="rfd_wx_1"))
                    .status == RefundStatus.SUCCEEDED and r)
    assert done.succeeded_at and done.channel_refund_no == accepted.channel_refund_no
    assert refund(channel).channel_refund_no == accepted.channel_refund_no  # the same out_refund_no: one refund
    assert channel.query_trade(out_trade_no="ord_wx_adapter1").status == TradeStatus.SUCCEEDED  # REFUND state
    assert channel.query_refund(out_trade_no="ord_wx_adapter1", out_refund_no="rfd_x").status == RefundStatus.NOT_FOUND


# -- every mapped error code, produced by the simulator --------------------------------------------------------


def expect(kind: type[ChannelError], code: str, call: Callable[[], Any]) -> None:
    with pytest.raises(kind) as raised:
        call()
    assert type(raised.value) is kind and raised.value.code == code


def test_error_codes_from_inputs(channel: WechatPayChannel, sim: WechatPaySimulator, account: dict[str, str]) -> None:
    expect(Refused, "invalid_request", lambda: create(channel, "ord_wx_zero", amount=0))  # PARAM_ERROR
    trade = create(channel)
    expect(Refused, "invalid_request", lambda: refund(channel))  # INVALID_REQUEST: not paid
    pay(trade.pay_url or "", "scan")
    expect(Retryable, "payer_paying", lambda: channel.close_trade(out_trade_no="ord_wx_adapter1"))  # USER_PAYING
    pay(trade.pay_url or "", "fail")
    channel.close_trade(out_trade_no="ord_wx_adapter1")
    expect(Refused, "trade_closed", lambda: create(channel))  # ORDER_CLOSED
    expect(Refused, "duplicate_out_trade_no", lambda: create(channel, amount=1))  # OUT_TRADE_NO_USED
    paid_trade(channel, "ord_wx_paid1")
    expect(Refused, "channel_refused", lambda: create(channel, "ord_wx_paid1"))  # TRADE_ERROR: already paid
    expect(Refused, "invalid_request", lambda: refund(channel, out_trade_no="ord_wx_paid1", amount=1051))
    expect(Refused, "not_found", lambda: refund(channel, out_trade_no="ord_wx_nothing"))  # RESOURCE_NOT_EXISTS
    other = httpx.post(f"{sim.base_url}/_sim/accounts", json={}).json()
    wrong_key = make_channel(sim.base_url, account, merchant_private_key=other["merchant_private_key"])
    expect(Retryable, "channel_auth_failed", lambda: create(wrong_key))  # SIGN_ERROR
    wrong_appid = make_channel(sim.base_url, account, appid=other["appid"])
    expect(Retryable, "channel_auth_failed", lambda: create(wrong_appid))  # APPID_MCHID_NOT_MATCH
    expect(Refused, "currency_not_supported", lambda: create(channel, currency="USD"))


@pytest.mark.parametrize(
    ("operation", "mode", "kind", "code"),
    [
        ("create", "refuse", Refused, "channel_refused"),  # 403 TRADE_ERROR
        ("refund", "refuse", Refused, "insufficient_balance"),  # 403 NOT_ENOUGH
        ("query", "rate_limit", Retryable, "channel_rate_limited"),  # 429 FREQUENCY_LIMITED
        ("create", "http_500", Retryable, "channel_system_error"),  # 500 SYSTEM_ERROR
        ("close", "http_500", Retryable, "channel_system_error"),
        ("refund_query", "rate_limit", Retryable, "channel_rate_limited"),
        ("query", "timeout_after_processing", UnknownOutcome, "channel_timeout"),
        ("refund", "timeout_after_processing", UnknownOutcome, "channel_timeout"),
        ("bill", "http_500", Retryable, "channel_system_error"),
    ],
)
def test_faults_map_to_outcome_kinds(
    channel: WechatPayChannel, sim: WechatPaySimulator, operation: str, mode: str, kind: type[ChannelError], code: str
) -> None:
    paid_trade(channel)
    calls: dict[str, Callable[[], Any]] = {
        "create": lambda: create(channel, "ord_wx_other"),
        "query": lambda: channel.query_trade(out_trade_no="ord_wx_adapter1"),
        "close": lambda: channel.close_trade(out_trade_no="ord_wx_adapter1"),
        "refund": lambda: refund(channel),
        "refund_query": lambda: channel.query_refund(out_trade_no="ord_wx_adapter1", out_refund_no="rfd_wx_1"),
        "bill": lambda: channel.download_bill(day=dt.date(2026, 1, 1)),
    }
    fault(sim, operation, mode)
    expect(kind, code, calls[operation])


def test_every_mapped_code_has_a_kind_and_a_code() -> None:
    assert {
        "USER_PAYING", "PARAM_ERROR", "INVALID_REQUEST", "ORDER_CLOSED", "SIGN_ERROR", "NOT_ENOUGH",
        "OUT_TRADE_NO_USED", "TRADE_ERROR", "ORDER_NOT_EXIST", "FREQUENCY_LIMITED", "SYSTEM_ERROR",
    } <= set(ERROR_CODES)
    assert all(issubclass(kind, (Refused, Retryable)) and code for kind, code in ERROR_CODES.values())


def test_unanswered_create_is_queried_and_answers_the_one_trade(
    channel: WechatPayChannel, sim: WechatPaySimulator
) -> None:
    fault(sim, "create", "timeout_after_processing")
    expect(UnknownOutcome, "channel_timeout", lambda: create(channel))
    # The channel made the trade but its query carries no code_url; the identical create (what the core sends
    # after the query) answers the code_url of the same trade, never a second one.
    assert channel.query_trade(out_trade_no="ord_wx_adapter1").status == TradeStatus.WAITING
    trade = create(channel)
    assert trade.status == TradeStatus.WAITING and trade.pay_url
    assert trade_of(sim, "ord_wx_adapter1")["create_calls"] == 2
    pay(trade.pay_url)
    assert channel.query_trade(out_trade_no="ord_wx_adapter1").status == TradeStatus.SUCCEEDED


def test_unreachable_channel_is_retryable(account: dict[str, str]) -> None:
    expect(Retryable, "channel_unreachable", lambda: create(make_channel("http://127.0.0.1:9", account)))


# -- the bill ------------------------------------------------------------------------------------------------


def test_bill_download_is_parsed_into_rows_with_the_hash_checked(
    channel: WechatPayChannel, sim: WechatPaySimulator
) -> None:
    paid_trade(channel, "ord_wx_bill1", 1050)
    paid_trade(channel, "ord_wx_bill2", 1)
    create(channel, "ord_wx_unpaid")
    refund(channel, "rfd_wx_bill1", 50, 1050, "ord_wx_bill1")
    today = dt.datetime.now(SHANGHAI).date()
    wait_for(lambda: channel.query_refund(out_trade_no="ord_wx_bill1", out_refund_no="rfd_wx_bill1").status
             == RefundStatus.SUCCEEDED)
    with channel.download_bill(day=today) as bill:
        rows = list(bill)
    payments = {r.out_trade_no: r for r in rows if r.kind == "payment"}
    assert set(payments) == {"ord_wx_bill1", "ord_wx_bill2"}
    assert (payments["ord_wx_bill1"].amount, payments["ord_wx_bill2"].amount) == (1050, 1)
    assert all(r.currency == "CNY" and r.status == "succeeded" and r.channel_trade_no for r in payments.values())
    assert payments["ord_wx_bill1"].completed_at and payments["ord_wx_bill1"].completed_at.date() == today
    [refunded] = [r for r in rows if r.kind == "refund"]
    assert (refunded.out_trade_no, refunded.out_refund_no, refunded.amount, refunded.status) == (
        "ord_wx_bill1", "rfd_wx_bill1", 50, "succeeded")
    # 手续费 is printed to 1/1000 fen (0.6% of 10.50 is 0.06300); ours is rounded to the fen.
    assert (payments["ord_wx_bill1"].fee, payments["ord_wx_bill2"].fee, refunded.fee) == (6, 0, 0)
    assert list(channel.download_bill(day=today - dt.timedelta(days=1))) == []
    with pytest.raises(BillNotReady) as raised:
        channel.download_bill(day=today + dt.timedelta(days=1))
    assert raised.value.code == "bill_not_found"

    adjust = {"drop": ["ord_wx_bill2"], "amount": {"ord_wx_bill1": 1000},
              "add": [{"out_trade_no": "ord_wx_ghost", "amount": 77, "status": "SUCCESS"}]}
    httpx.post(f"{sim.base_url}/_sim/bills/{today.isoformat()}/adjust", json=adjust).raise_for_status()
    adjusted = {r.out_trade_no: r.amount for r in list(channel.download_bill(day=today)) if r.kind == "payment"}
    assert adjusted == {"ord_wx_bill1": 1000, "ord_wx_ghost": 77}


# -- answers the simulator never gives: a fake gateway signs whatever it is told to -----------------------------


Answer = tuple[int, bytes, dict[str, str]]


def answering(answer: Answer) -> Callable[[str], Answer]:
    """A ``FakeGateway.answer`` that gives the same answer to every request."""
    return lambda path: answer


class FakeGateway:
    """Answers every request with ``self.answer(path) -> (status, body, headers)``, signed by ``self.key``."""

    def __init__(self, key: rsa.RSAPrivateKey, key_id: str) -> None:
        self.key, self.key_id = key, key_id
        self.answer: Callable[[str], Answer] = lambda path: (200, b"{}", {})
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, body, headers = gateway.answer(self.path)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_port}"

    def signed(self, status: int, obj: Any, **tweaks: Any) -> tuple[int, bytes, dict[str, str]]:
        body = json.dumps(obj).encode() if obj is not None else b""
        headers = signing.signed_headers(tweaks.pop("key", self.key), self.key_id, body,
                                         timestamp=tweaks.pop("timestamp", None))
        headers.update(tweaks.pop("headers", {}))
        for name in tweaks.pop("drop", ()):
            headers.pop(name)
        return status, tweaks.pop("body", body), {"Content-Type": "application/json", **headers}


@pytest.fixture
def gateway(sim: WechatPaySimulator, account: dict[str, str]) -> Iterator[FakeGateway]:
    # The fake gateway signs with the account's platform key, which only the simulator holds.
    fake = FakeGateway(sim.accounts[account["mchid"]].platform_private_key, account["platform_public_key_id"])
    yield fake
    fake.server.shutdown()


PAID_ANSWER = {"mchid": "", "out_trade_no": "ord_wx_adapter1", "trade_state": "SUCCESS", "transaction_id": "42",
               "amount": {"total": 1050, "currency": "CNY"}}


def test_answers_failing_verification_are_unknown_outcomes(gateway: FakeGateway, account: dict[str, str]) -> None:
    channel = make_channel(gateway.base_url, account)
    wrong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good = gateway.signed(200, PAID_ANSWER)
    liars = [
        (good[0], good[1].replace(b"1050", b"1"), good[2]),  # a tampered field
        gateway.signed(200, PAID_ANSWER, key=wrong),  # a wrong key
        gateway.signed(200, PAID_ANSWER, drop=[signing.SIGNATURE_HEADER]),  # a missing header
        gateway.signed(200, PAID_ANSWER, timestamp=str(int(time.time()) - 301)),  # a stale timestamp
        gateway.signed(200, PAID_ANSWER, headers={signing.SERIAL_HEADER: "PUB_KEY_ID_OTHER"}),
        gateway.signed(403, {"code": "OUT_TRADE_NO_USED", "message": "x"}, key=wrong),  # a forged refusal
    ]
    for liar in liars:
        gateway.answer = answering(liar)
        expect(UnknownOutcome, "bad_channel_signature", lambda: channel.query_trade(out_trade_no="ord_wx_adapter1"))
    gateway.answer = lambda path: good
    assert channel.query_trade(out_trade_no="ord_wx_adapter1").status == TradeStatus.SUCCEEDED


def test_unsigned_errors_can_only_mean_try_again(gateway: FakeGateway, account: dict[str, str]) -> None:
    channel = make_channel(gateway.base_url, account)
    for status, code in ((500, "TRADE_ERROR"), (401, "OUT_TRADE_NO_USED"), (429, "")):
        body = json.dumps({"code": code, "message": "unsigned"}).encode()
        gateway.answer = answering((status, body, {"Content-Type": "application/json"}))
        with pytest.raises(Retryable):
            channel.query_trade(out_trade_no="ord_wx_adapter1")
    gateway.answer = lambda path: gateway.signed(400, {"code": "SOMETHING_NEW", "message": "?"})
    expect(UnknownOutcome, "channel_error", lambda: channel.query_trade(out_trade_no="ord_wx_adapter1"))


def test_bill_answers(gateway: FakeGateway, account: dict[str, str]) -> None:
    channel = make_channel(gateway.base_url, account)
    day = dt.date(2026, 1, 1)
    gateway.answer = lambda path: gateway.signed(400, {"code": "NO_STATEMENT_EXIST", "message": "账单文件不存在"})
    expect(BillNotReady, "bill_not_found", lambda: channel.download_bill(day=day))
    gateway.answer = lambda path: gateway.signed(400, {"code": "STATEMENT_CREATING", "message": "账单生成中"})
    expect(BillNotReady, "bill_creating", lambda: channel.download_bill(day=day))
    content = "交易时间,商户订单号\r\n总交易单数\r\n`0\r\n".encode()

    def bill(path: str, digest: str = hashlib.sha1(b"something else").hexdigest()) -> tuple[int, bytes, dict[str, str]]:
        if path.startswith("/v3/billdownload/"):
            return 200, content, {}
        return gateway.signed(200, {"hash_type": "SHA1", "hash_value": digest,
                                    "download_url": f"{gateway.base_url}/v3/billdownload/file?token=t"})

    gateway.answer = bill
    expect(Retryable, "bill_hash_mismatch", lambda: channel.download_bill(day=day))
    gateway.answer = lambda path: bill(path, hashlib.sha1(content).hexdigest())
    assert list(channel.download_bill(day=day)) == []
