"""The Alipay adapter's outcomes against the in-process simulator; a scripted gateway for Alipay's rare answers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import httpx
import pytest

from channels.alipay import signing
from channels.alipay.adapter import ERRORS, HTTP_STATUSES, AlipayChannel
from channels.alipay.simulator import AlipaySimulator
from channels.base import BillNotReady, RefundStatus, Refused, Retryable, TradeStatus, UnknownOutcome
from tests.alipay_support import (
    Gateway,
    channel_for,
    create,
    open_account,
    pay,
    refund,
    serving,
)

TODAY = dt.datetime.now(signing.CST).date


@pytest.fixture(scope="module")
def sim() -> Iterator[AlipaySimulator]:
    with AlipaySimulator(port=0) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def account(sim: AlipaySimulator) -> dict[str, str]:
    return open_account(sim)


@pytest.fixture
def channel(sim: AlipaySimulator, account: dict[str, str]) -> AlipayChannel:
    httpx.post(f"{sim.base_url}/_sim/reset").raise_for_status()
    return channel_for(sim.base_url, account)


@pytest.fixture(scope="module")
def gateway(account: dict[str, str]) -> Iterator[tuple[Gateway, AlipayChannel]]:
    scripted = Gateway()
    with serving(scripted) as url:
        yield scripted, channel_for(url, account, alipay_public_key=scripted.public_pem)


def fault(sim: AlipaySimulator, operation: str, mode: str, count: int = 1) -> None:
    body = {"operation": operation, "mode": mode, "count": count}
    httpx.post(f"{sim.base_url}/_sim/faults", json=body).raise_for_status()


def snapshot(sim: AlipaySimulator, out_trade_no: str = "ord_a1") -> dict:
    return httpx.get(f"{sim.base_url}/_sim/trades/{out_trade_no}").json()


def paid(channel: AlipayChannel, out_trade_no: str = "ord_a1", amount: int = 1050) -> str:
    pay_url = create(channel, out_trade_no, amount).pay_url
    assert pay_url
    pay(pay_url)
    return pay_url


# -- trades ------------------------------------------------------------------------------------------------


def test_the_trade_exists_once_the_payer_scans_the_code(channel: AlipayChannel, sim: AlipaySimulator) -> None:
    trade = create(channel)
    assert trade.status == TradeStatus.WAITING and trade.pay_url and trade.pay_url.startswith(sim.base_url)
    # Alipay's precreate only makes a QR code: query knows nothing of it until it is scanned.
    assert channel.query_trade(out_trade_no="ord_a1").status == TradeStatus.NOT_FOUND
    httpx.get(trade.pay_url).raise_for_status()
    scanned = channel.query_trade(out_trade_no="ord_a1")
    assert (scanned.status, scanned.amount, scanned.currency) == (TradeStatus.WAITING, 1050, "CNY")
    assert scanned.channel_trade_no and len(scanned.channel_trade_no) == 28
    closed = channel.close_trade(out_trade_no="ord_a1")
    assert closed.status == TradeStatus.CLOSED and closed.channel_trade_no == scanned.channel_trade_no
    assert channel.query_trade(out_trade_no="ord_a1").status == TradeStatus.CLOSED
    assert httpx.post(trade.pay_url, data={"action": "pay"}).status_code == 409


def test_closing_an_unscanned_code_finds_no_trade_and_the_code_stays_payable(channel: AlipayChannel) -> None:
    trade = create(channel)
    assert channel.close_trade(out_trade_no="ord_a1").status == TradeStatus.NOT_FOUND
    pay(trade.pay_url or "")
    assert channel.query_trade(out_trade_no="ord_a1").status == TradeStatus.SUCCEEDED


def test_a_repeated_create_is_deduplicated_by_out_trade_no(channel: AlipayChannel, sim: AlipaySimulator) -> None:
    first, second = create(channel), create(channel)
    assert first.pay_url == second.pay_url
    assert snapshot(sim)["create_calls"] == 2
    with pytest.raises(Refused) as raised:
        create(channel, amount=999)  # ACQ.CONTEXT_INCONSISTENT
    assert raised.value.code == "duplicate_out_trade_no"


def test_create_of_a_paid_or_closed_trade_answers_the_trade_as_it_stands(channel: AlipayChannel) -> None:
    paid(channel)
    again = create(channel)  # ACQ.TRADE_HAS_SUCCESS
    assert again.status == TradeStatus.SUCCEEDED and again.paid_at is not None and again.amount == 1050
    trade = create(channel, "ord_a2")
    httpx.get(trade.pay_url or "").raise_for_status()
    channel.close_trade(out_trade_no="ord_a2")
    assert create(channel, "ord_a2").status == TradeStatus.CLOSED  # ACQ.TRADE_HAS_CLOSE


def test_close_of_a_paid_trade_reports_it_paid(channel: AlipayChannel) -> None:
    paid(channel)
    closed = channel.close_trade(out_trade_no="ord_a1")  # ACQ.TRADE_STATUS_ERROR, then the query decides
    assert closed.status == TradeStatus.SUCCEEDED and closed.paid_at is not None


def test_an_expired_code_cannot_be_paid(channel: AlipayChannel) -> None:
    trade = create(channel, expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    assert httpx.post(trade.pay_url or "", data={"action": "pay"}).status_code == 409


# -- amounts -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [1, 10, 1050, 10_000_000_000])  # 0.01, 0.10, 10.50 and Alipay's ceiling
def test_amounts_reach_alipay_exactly(channel: AlipayChannel, sim: AlipaySimulator, amount: int) -> None:
    paid(channel, amount=amount)
    assert snapshot(sim)["amount"] == amount
    assert channel.query_trade(out_trade_no="ord_a1").amount == amount


def test_an_amount_over_alipays_ceiling_is_refused(channel: AlipayChannel) -> None:
    with pytest.raises(Refused) as raised:
        create(channel, amount=10_000_000_001)  # ACQ.TOTAL_FEE_EXCEED
    assert raised.value.code == "amount_too_large"


def test_a_third_decimal_from_alipay_is_never_trusted(gateway: tuple[Gateway, AlipayChannel]) -> None:
    scripted, channel = gateway
    scripted.queue("alipay.trade.query", {"code": "10000", "msg": "Success", "out_trade_no": "ord_a1",
                                          "trade_status": "TRADE_SUCCESS", "total_amount": "10.505"})
    with pytest.raises(UnknownOutcome):
        channel.query_trade(out_trade_no="ord_a1")


def test_only_cny(channel: AlipayChannel) -> None:
    with pytest.raises(Refused) as raised:
        channel.create_trade(out_trade_no="ord_a1", amount=1, currency="USD", description="", notify_url="",
                             expires_at=dt.datetime(2035, 1, 1, tzinfo=dt.UTC))
    assert raised.value.code == "currency_not_supported"


# -- refunds -----------------------------------------------------------------------------------------------


def test_partial_and_full_refunds(channel: AlipayChannel, sim: AlipaySimulator) -> None:
    paid(channel)
    first = refund(channel, "rfd_1", 50)
    assert first.status == RefundStatus.SUCCEEDED and first.succeeded_at is not None
    # The same out_request_no again moves no money (fund_change=N): the refund query answers for it.
    again = refund(channel, "rfd_1", 50)
    assert (again.status, again.amount) == (RefundStatus.SUCCEEDED, 50)
    assert [r["amount"] for r in snapshot(sim)["refunds"]] == [50]
    found = channel.query_refund(out_trade_no="ord_a1", out_refund_no="rfd_1")
    assert (found.status, found.amount, found.currency) == (RefundStatus.SUCCEEDED, 50, "CNY")
    assert channel.query_refund(out_trade_no="ord_a1", out_refund_no="rfd_x").status == RefundStatus.NOT_FOUND
    assert refund(channel, "rfd_2", 1000).status == RefundStatus.SUCCEEDED
    # Alipay closes a fully refunded trade.
    assert channel.query_trade(out_trade_no="ord_a1").status == TradeStatus.CLOSED
    assert refund(channel, "rfd_2", 1000).status == RefundStatus.SUCCEEDED  # a repeat still answers


@pytest.mark.parametrize(
    ("setup", "number", "amount", "code"),
    [
        ("none", "rfd_1", 50, "trade_not_found"),  # ACQ.TRADE_NOT_EXIST
        ("scanned", "rfd_1", 50, "trade_status_invalid"),  # ACQ.TRADE_STATUS_ERROR: not paid
        ("paid", "rfd_1", 1051, "refund_exceeds_amount"),  # ACQ.REASON_TRADE_REFUND_FEE_ERR
        ("paid", "rfd_0", 60, "duplicate_out_refund_no"),  # ACQ.DISCORDANT_REPEAT_REQUEST
        ("refunded", "rfd_1", 50, "trade_closed"),  # ACQ.TRADE_HAS_CLOSE
    ],
)
def test_refund_refusals(channel: AlipayChannel, setup: str, number: str, amount: int, code: str) -> None:
    if setup == "scanned":
        httpx.get(create(channel).pay_url or "").raise_for_status()
    elif setup in ("paid", "refunded"):
        paid(channel)
        refund(channel, "rfd_0", 1050 if setup == "refunded" else 50)
    with pytest.raises(Refused) as raised:
        refund(channel, number, amount)
    assert raised.value.code == code


def test_refund_query_of_an_unknown_trade_is_not_found(channel: AlipayChannel) -> None:
    assert channel.query_refund(out_trade_no="ord_none", out_refund_no="rfd_1").status == RefundStatus.NOT_FOUND


# -- outcome kinds -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "mode", "kind", "code"),
    [
        ("create", "http_500", Retryable, "channel_system_error"),
        ("create", "rate_limit", Retryable, "channel_rate_limited"),  # 40005 isv.app-call-limited
        ("create", "refuse", Refused, "channel_refused"),  # ACQ.ACCESS_FORBIDDEN
        ("create", "timeout_after_processing", UnknownOutcome, "channel_timeout"),
        ("query", "http_500", Retryable, "channel_system_error"),
        ("refund", "rate_limit", Retryable, "channel_rate_limited"),
        ("refund", "timeout_after_processing", UnknownOutcome, "channel_timeout"),
        ("refund_query", "refuse", Refused, "channel_refused"),
        ("bill", "http_500", Retryable, "channel_system_error"),
    ],
)
def test_faults_map_to_outcome_kinds(channel: AlipayChannel, sim: AlipaySimulator, operation, mode, kind, code) -> None:
    calls = {
        "create": lambda: create(channel, "ord_a2"),
        "query": lambda: channel.query_trade(out_trade_no="ord_a1"),
        "refund": lambda: refund(channel, "rfd_1", 50),
        "refund_query": lambda: channel.query_refund(out_trade_no="ord_a1", out_refund_no="rfd_1"),
        "bill": lambda: channel.download_bill(day=TODAY()),
    }
    paid(channel)
    fault(sim, operation, mode)
    with pytest.raises(kind) as raised:
        calls[operation]()
    assert type(raised.value) is kind and raised.value.code == code
    if mode == "timeout_after_processing":
        # The channel did the work; only the answer was lost.
        assert snapshot(sim, "ord_a2" if operation == "create" else "ord_a1")["create_calls"] >= 1
        if operation == "refund":
            assert channel.query_refund(out_trade_no="ord_a1", out_refund_no="rfd_1").status == RefundStatus.SUCCEEDED


def test_a_wrong_app_key_is_retryable_not_a_refusal(sim: AlipaySimulator, account: dict[str, str]) -> None:
    other = open_account(sim)
    wrong = channel_for(sim.base_url, account, app_private_key=other["app_private_key"])
    with pytest.raises(Retryable) as raised:
        create(wrong)  # isv.invalid-signature
    assert raised.value.code == "channel_auth_failed"


def test_an_unknown_app_gets_an_unsigned_answer_which_proves_nothing(sim: AlipaySimulator, account) -> None:
    stranger = channel_for(sim.base_url, account, app_id="2021999999999999")
    with pytest.raises(UnknownOutcome) as raised:
        create(stranger)  # the unsigned error_response, isv.invalid-app-id
    assert raised.value.code == "bad_channel_signature"


def test_answers_signed_with_another_key_are_unknown_outcomes(sim: AlipaySimulator, account) -> None:
    other = open_account(sim)
    fooled = channel_for(sim.base_url, account, alipay_public_key=other["alipay_public_key"])
    with pytest.raises(UnknownOutcome) as raised:
        create(fooled)
    assert raised.value.code == "bad_channel_signature"


def test_unreachable_alipay_is_retryable(account: dict[str, str]) -> None:
    with pytest.raises(Retryable) as raised:
        create(channel_for("http://127.0.0.1:9", account))
    assert raised.value.code == "channel_unreachable"


# Every entry of the mapping table, and how it is produced: through the simulator where Alipay's behaviour can
# be provoked, through the scripted gateway for Alipay's own failures.
SCRIPTED = {
    "20000": "isp.unknow-error", "40001": "isv.missing-signature", "40002": "isv.invalid-timestamp",
    "40004": "ACQ.SELLER_BALANCE_NOT_ENOUGH", "40005": "", "isv.method-call-limited": "40005",
    "ACQ.SYSTEM_ERROR": "40004",
}
SIMULATED = {
    "isv.invalid-signature": "test_a_wrong_app_key_is_retryable_not_a_refusal",
    "isv.app-call-limited": "test_faults_map_to_outcome_kinds",
    "ACQ.INVALID_PARAMETER": "test_an_invalid_out_trade_no_is_refused",
    "ACQ.ACCESS_FORBIDDEN": "test_faults_map_to_outcome_kinds",
    "ACQ.TRADE_NOT_EXIST": "test_refund_refusals",
    "ACQ.TRADE_HAS_CLOSE": "test_refund_refusals",
    "ACQ.TRADE_STATUS_ERROR": "test_refund_refusals",
    "ACQ.TOTAL_FEE_EXCEED": "test_an_amount_over_alipays_ceiling_is_refused",
    "ACQ.CONTEXT_INCONSISTENT": "test_a_repeated_create_is_deduplicated_by_out_trade_no",
    "ACQ.REASON_TRADE_REFUND_FEE_ERR": "test_refund_refusals",
    "ACQ.DISCORDANT_REPEAT_REQUEST": "test_refund_refusals",
    "isp.bill_not_exist": "test_a_bill_of_a_day_to_come_is_not_there_yet",
}


def test_every_mapped_code_is_produced_by_a_test() -> None:
    assert set(ERRORS) == set(SCRIPTED) | set(SIMULATED)
    assert all(name in globals() for name in SIMULATED.values())


@pytest.mark.parametrize("key", sorted(SCRIPTED))
def test_alipays_own_failures_map_to_outcome_kinds(gateway: tuple[Gateway, AlipayChannel], key: str) -> None:
    scripted, channel = gateway
    code, sub_code = (key, SCRIPTED[key]) if key[0].isdigit() else (SCRIPTED[key], key)
    answer = {"code": code, "msg": "x", **({"sub_code": sub_code} if sub_code else {})}
    scripted.queue("alipay.trade.precreate", answer)
    kind, ours = ERRORS[key]
    with pytest.raises(kind) as raised:
        create(channel)
    assert type(raised.value) is kind and raised.value.code == ours


def test_an_invalid_out_trade_no_is_refused(channel: AlipayChannel) -> None:
    with pytest.raises(Refused) as raised:
        create(channel, "ord a1!")  # ACQ.INVALID_PARAMETER
    assert raised.value.code == "invalid_request"


def test_http_429_and_unknown_codes(gateway: tuple[Gateway, AlipayChannel]) -> None:
    scripted, channel = gateway
    scripted.queue_raw(b"", status=429)
    with pytest.raises(Retryable) as limited:
        create(channel)
    assert (limited.value.code, limited.value.retry_after_s) == (HTTP_STATUSES[429][1], 3.0)
    scripted.queue("alipay.trade.precreate", {"code": "99999", "msg": "?"})
    with pytest.raises(UnknownOutcome):
        create(channel)


def test_a_signed_answer_about_another_trade_is_not_trusted(gateway: tuple[Gateway, AlipayChannel]) -> None:
    scripted, channel = gateway
    scripted.queue("alipay.trade.query", {"code": "10000", "msg": "Success", "out_trade_no": "ord_other",
                                          "trade_status": "TRADE_SUCCESS", "total_amount": "10.50"})
    with pytest.raises(UnknownOutcome):
        channel.query_trade(out_trade_no="ord_a1")


# -- bills -------------------------------------------------------------------------------------------------


def test_the_bill_is_parsed_into_rows(channel: AlipayChannel, sim: AlipaySimulator) -> None:
    paid(channel, "ord_b1", 1050)
    paid(channel, "ord_b2", 1)
    refund(channel, "rfd_b1", 50, out_trade_no="ord_b1")
    create(channel, "ord_b3")  # never paid: not in the bill
    with channel.download_bill(day=TODAY()) as bill:
        rows = list(bill)
    assert sorted((r.kind, r.out_trade_no, r.amount, r.out_refund_no) for r in rows) == [
        ("payment", "ord_b1", 1050, None), ("payment", "ord_b2", 1, None), ("refund", "ord_b1", 50, "rfd_b1"),
    ]
    assert all(r.currency == "CNY" and r.channel_trade_no and r.completed_at for r in rows)
    assert all(r.completed_at and r.completed_at.date() == TODAY() for r in rows)
    # 服务费 is printed negative when charged (0.6% at the simulator, to the fen); ours is positive.
    assert sorted((r.out_trade_no, r.kind, r.fee) for r in rows) == [
        ("ord_b1", "payment", 6), ("ord_b1", "refund", 0), ("ord_b2", "payment", 0),
    ]


def test_bill_adjustments_show_up_as_discrepancies(channel: AlipayChannel, sim: AlipaySimulator) -> None:
    paid(channel, "ord_b1", 1050)
    paid(channel, "ord_b2", 200)
    adjust = {"drop": ["ord_b1"], "amount": {"ord_b2": 199}, "add": [{"out_trade_no": "ord_ghost", "amount": 5}]}
    httpx.post(f"{sim.base_url}/_sim/bills/{TODAY().isoformat()}/adjust", json=adjust).raise_for_status()
    rows = list(channel.download_bill(day=TODAY()))
    assert sorted((r.out_trade_no, r.amount) for r in rows) == [("ord_b2", 199), ("ord_ghost", 5)]


def test_a_bill_of_a_day_to_come_is_not_there_yet(channel: AlipayChannel) -> None:
    with pytest.raises(BillNotReady) as raised:
        channel.download_bill(day=TODAY() + dt.timedelta(days=1))  # isp.bill_not_exist
    assert raised.value.code == "bill_not_found"
