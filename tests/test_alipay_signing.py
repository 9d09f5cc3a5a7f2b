"""Alipay's RSA2 signatures in each direction: our requests, Alipay's answers, Alipay's notifications."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from channels.alipay import signing
from channels.alipay.adapter import AlipayChannel
from channels.alipay.simulator import AlipaySimulator
from channels.base import InvalidNotification, RefundStatus, TradeStatus, UnknownOutcome
from tests.alipay_support import (
    Gateway,
    Receiver,
    channel_for,
    create,
    open_account,
    pay,
    refund,
    serving,
)

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


# -- the canonical string and the primitives ---------------------------------------------------------------


def test_the_string_to_sign_is_sorted_raw_and_without_empty_values_or_the_signature() -> None:
    params = {"method": "alipay.trade.query", "app_id": "2021", "sign": "xyz", "notify_url": "", "email": "a@b.c&d=e",
              "biz_content": '{"out_trade_no":"o 1"}', "sign_type": "RSA2"}
    assert signing.canonical(params) == (
        'app_id=2021&biz_content={"out_trade_no":"o 1"}&email=a@b.c&d=e&method=alipay.trade.query&sign_type=RSA2'
    )
    # Notifications leave sign_type out as well.
    assert "sign_type" not in signing.canonical(params, exclude=signing.NOTIFICATION_UNSIGNED)


def test_sign_and_verify() -> None:
    content = "a=1&b=订单"
    signature = signing.sign(KEY, content)
    assert signing.verify(KEY.public_key(), content, signature)
    assert not signing.verify(KEY.public_key(), "a=2&b=订单", signature)  # a tampered field
    assert not signing.verify(OTHER_KEY.public_key(), content, signature)  # a wrong key
    assert not signing.verify(KEY.public_key(), content, None)  # a missing sign
    assert not signing.verify(KEY.public_key(), content, "not base64!")
    assert signing.verify(KEY.public_key(), "订单", signing.sign(KEY, "订单", "gbk"), "gbk")


def test_the_signed_text_is_cut_from_the_raw_answer_byte_for_byte() -> None:
    inner = '{ "code":"10000", "msg":"Success", "sub_msg":"}{\\"", "qr_code":"https://qr.alipay.com/bax1" }'
    text = f'{{"alipay_trade_precreate_response" :\n {inner},"sign":"{signing.sign(KEY, inner)}"}}'
    raw, signature = signing.extract_response(text, "alipay.trade.precreate")
    assert raw == inner and signing.verify(KEY.public_key(), raw, signature)
    # The sign may come first, too.
    assert signing.extract_response(f'{{"sign":"s","alipay_trade_query_response":{inner}}}', "alipay.trade.query") == (
        inner, "s",
    )
    with pytest.raises(ValueError):
        signing.extract_response('{"error_response":{"code":"40002"}}', "alipay.trade.query")
    with pytest.raises(ValueError):
        signing.extract_response("<html>502</html>", "alipay.trade.query")


def test_keys_load_in_both_pem_forms(tmp_path) -> None:
    from channels.alipay.simulator import private_pem
    from channels.management.commands.generate_dev_keys import write_rsa_pair

    pkcs8, public = write_rsa_pair(tmp_path, "k")
    key = signing.load_private_key(pkcs8.read_text())
    assert signing.load_private_key(private_pem(key)).private_numbers() == key.private_numbers()
    assert signing.load_public_key(public.read_bytes()).public_numbers() == key.public_key().public_numbers()


# -- requests: the simulator verifies them as Alipay does --------------------------------------------------


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
    httpx.post(f"{sim.base_url}/_sim/clock", json={"speed": 1000}).raise_for_status()
    return channel_for(sim.base_url, account)


def signed_request(account: dict[str, str], **changes: str | None) -> dict[str, str]:
    params = {"app_id": account["app_id"], "method": "alipay.trade.query", "charset": "utf-8", "sign_type": "RSA2",
              "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"), "version": "1.0", "biz_content": '{"out_trade_no":"x"}'}
    params["sign"] = signing.sign(signing.load_private_key(account["app_private_key"]), signing.canonical(params))
    changed: dict[str, str | None] = {**params, **changes}
    return {k: v for k, v in changed.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "code", "sub_code"),
    [
        ({}, "40004", "ACQ.TRADE_NOT_EXIST"),  # a good signature: the business answer
        ({"biz_content": '{"out_trade_no":"y"}'}, "40002", "isv.invalid-signature"),  # a tampered field
        ({"sign": None}, "40001", "isv.missing-signature"),
        ({"sign_type": "RSA"}, "40002", "isv.invalid-signature-type"),
        ({"timestamp": "yesterday"}, "40002", "isv.invalid-timestamp"),
    ],
)
def test_the_gateway_verifies_requests(sim: AlipaySimulator, account: dict[str, str], changes, code, sub_code) -> None:
    answer = httpx.post(f"{sim.base_url}/gateway.do", data=signed_request(account, **changes))
    raw, signature = signing.extract_response(answer.text, "alipay.trade.query")
    # Even a refusal is signed by Alipay, so that the app can trust it.
    assert signing.verify(signing.load_public_key(account["alipay_public_key"]), raw, signature)
    assert answer.json()["alipay_trade_query_response"]["code"] == code
    assert answer.json()["alipay_trade_query_response"]["sub_code"] == sub_code


def test_a_request_signed_with_a_wrong_key_is_refused(sim: AlipaySimulator, account: dict[str, str]) -> None:
    other = open_account(sim)
    params = signed_request({**account, "app_private_key": other["app_private_key"]})
    answer = httpx.post(f"{sim.base_url}/gateway.do", data=params).json()
    assert answer["alipay_trade_query_response"]["sub_code"] == "isv.invalid-signature"


def test_an_unknown_app_gets_the_unsigned_error_response(sim: AlipaySimulator, account: dict[str, str]) -> None:
    answer = httpx.post(f"{sim.base_url}/gateway.do", data=signed_request(account, app_id="2021000000000000")).json()
    assert answer == {"error_response": {"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.invalid-app-id",
                                         "sub_msg": "无效的AppID参数"}}


# -- answers: the adapter trusts only what verifies ---------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(account: dict[str, str]) -> Iterator[tuple[Gateway, AlipayChannel]]:
    scripted = Gateway()
    with serving(scripted) as url:
        yield scripted, channel_for(url, account, alipay_public_key=scripted.public_pem)


PAID = {"code": "10000", "msg": "Success", "out_trade_no": "ord_s1", "trade_no": "2026",
        "trade_status": "TRADE_SUCCESS", "total_amount": "10.50"}


def test_a_verified_answer_is_used(gateway: tuple[Gateway, AlipayChannel]) -> None:
    scripted, channel = gateway
    scripted.queue("alipay.trade.query", PAID)
    assert channel.query_trade(out_trade_no="ord_s1").status == TradeStatus.SUCCEEDED


@pytest.mark.parametrize("forgery", ["tampered", "wrong_key", "missing_sign", "unsigned_error"])
def test_an_answer_whose_signature_does_not_match_is_an_unknown_outcome(gateway, forgery: str) -> None:
    scripted, channel = gateway
    if forgery == "tampered":
        body = signing.response_body("alipay.trade.query", {**PAID, "trade_status": "WAIT_BUYER_PAY"}, scripted.key)
        scripted.queue_raw(body.replace(b"WAIT_BUYER_PAY", b"TRADE_SUCCESS"))
    elif forgery == "wrong_key":
        scripted.queue_raw(signing.response_body("alipay.trade.query", PAID, OTHER_KEY))
    elif forgery == "missing_sign":
        scripted.queue_raw(json.dumps({"alipay_trade_query_response": PAID}).encode())
    else:
        scripted.queue_raw(signing.response_body("", {"code": "40004", "sub_code": "ACQ.TRADE_NOT_EXIST"}, None))
    with pytest.raises(UnknownOutcome) as raised:
        channel.query_trade(out_trade_no="ord_s1")
    assert raised.value.code == "bad_channel_signature"


# -- notifications: the adapter verifies what the simulator sends -------------------------------------------


def notifications(sim: AlipaySimulator, channel: AlipayChannel, receiver: Receiver, count: int) -> list[bytes]:
    deadline = time.monotonic() + 10
    while len(receiver.bodies) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(receiver.bodies) >= count
    return receiver.bodies


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    catcher = Receiver()
    with serving(catcher) as url:
        yield catcher, f"{url}/callbacks/alipay"


def test_a_payment_notification_verifies_and_parses(sim, channel: AlipayChannel, receiver) -> None:
    catcher, url = receiver
    pay(create(channel, "ord_n1", 1050, notify_url=url).pay_url or "")
    body = notifications(sim, channel, catcher, 1)[0]
    assert catcher.headers[0]["Content-Type"].startswith("application/x-www-form-urlencoded")
    parsed = channel.parse_notification(headers=catcher.headers[0], body=body)
    trade = parsed.trade
    assert trade is not None and parsed.out_trade_no == "ord_n1" and parsed.notification_id
    assert (trade.status, trade.amount, trade.currency) == (TradeStatus.SUCCEEDED, 1050, "CNY")
    assert trade.paid_at is not None and trade.channel_trade_no


def test_a_refund_notification_names_the_refund(sim, channel: AlipayChannel, receiver) -> None:
    catcher, url = receiver
    pay(create(channel, "ord_n1", 1050, notify_url=url).pay_url or "")
    refund(channel, "rfd_n1", 50, out_trade_no="ord_n1")
    bodies = notifications(sim, channel, catcher, 2)
    parsed = [channel.parse_notification(headers={}, body=b) for b in bodies]
    refunds = [p.refund for p in parsed if p.refund is not None]
    assert len(refunds) == 1 and refunds[0].out_refund_no == "rfd_n1" and refunds[0].status == RefundStatus.SUCCEEDED
    assert len({p.notification_id for p in parsed}) == 2


def alter(body: bytes, **changes: str | None) -> bytes:
    params = dict(parse_qsl(body.decode(), keep_blank_values=True))
    params.update({k: v for k, v in changes.items() if v is not None})
    return urlencode({k: v for k, v in params.items() if changes.get(k, "") is not None}).encode()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"total_amount": "0.01"}, "bad_signature"),  # a tampered field
        ({"sign": None}, "missing_signature"),
        ({"sign_type": "RSA"}, "unsupported_sign_type"),
        ({"trade_status": "TRADE_CLOSED"}, "bad_signature"),
    ],
)
def test_a_tampered_notification_is_rejected(sim, channel: AlipayChannel, receiver, changes, reason) -> None:
    catcher, url = receiver
    pay(create(channel, "ord_n1", 1050, notify_url=url).pay_url or "")
    body = notifications(sim, channel, catcher, 1)[0]
    with pytest.raises(InvalidNotification) as raised:
        channel.parse_notification(headers={}, body=alter(body, **changes))
    assert raised.value.reason == reason


def test_a_notification_checked_with_a_wrong_key_or_for_another_app_is_rejected(sim, channel, receiver, account):
    catcher, url = receiver
    pay(create(channel, "ord_n1", 1050, notify_url=url).pay_url or "")
    body = notifications(sim, channel, catcher, 1)[0]
    other = open_account(sim)
    with pytest.raises(InvalidNotification) as wrong_key:
        channel_for(sim.base_url, account, alipay_public_key=other["alipay_public_key"]).parse_notification(
            headers={}, body=body)
    assert wrong_key.value.reason == "bad_signature"
    with pytest.raises(InvalidNotification) as other_app:
        channel_for(sim.base_url, account, app_id=other["app_id"]).parse_notification(headers={}, body=body)
    assert other_app.value.reason == "wrong_app_id"
    for junk in (b"\xff\xfe", b"no-equals-sign", b""):
        with pytest.raises(InvalidNotification):
            channel.parse_notification(headers={}, body=junk)


def test_the_bad_signature_fault_sends_a_notification_that_fails_verification(sim, channel, receiver) -> None:
    catcher, url = receiver
    httpx.post(f"{sim.base_url}/_sim/faults", json={"operation": "notify", "mode": "bad_signature_notify",
                                                    "count": 1}).raise_for_status()
    catcher.reply = b"fail"  # as our callback answers a forgery: Alipay sends it again
    pay(create(channel, "ord_n1", 1050, notify_url=url).pay_url or "")
    first, second = notifications(sim, channel, catcher, 2)[:2]
    with pytest.raises(InvalidNotification):
        channel.parse_notification(headers={}, body=first)
    retry = channel.parse_notification(headers={}, body=second)
    assert retry.notification_id == dict(parse_qsl(first.decode()))["notify_id"]  # the same notify_id on retries
