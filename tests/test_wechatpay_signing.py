"""WeChat Pay v3 signatures in each direction, and the AEAD envelope of notifications.

Requests (merchant → channel) are checked by the simulator, answers and notifications (channel → merchant) by
the adapter. No database: the simulator runs in-process.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from channels.base import InvalidNotification, RefundStatus, TradeStatus
from channels.http import Timeouts
from channels.wechatpay import signing
from channels.wechatpay.adapter import WechatPayChannel
from channels.wechatpay.simulator import WechatPaySimulator

APIV3_KEY = "0123456789abcdefghijklmnopqrstuv"
MCHID, KEY_ID = "1900000001", "PUB_KEY_ID_0100000000000000000000000001"


@pytest.fixture(scope="module")
def keys() -> dict[str, rsa.RSAPrivateKey]:
    return {name: rsa.generate_private_key(public_exponent=65537, key_size=2048)
            for name in ("merchant", "platform", "other")}


@pytest.fixture(scope="module")
def channel(keys: dict[str, rsa.RSAPrivateKey]) -> WechatPayChannel:
    return WechatPayChannel(
        api_base="http://127.0.0.1:9", mchid=MCHID, appid="wx0000000000000001",
        merchant_private_key=signing.private_pem(keys["merchant"]), merchant_serial_no="AB" * 20,
        apiv3_key=APIV3_KEY, platform_public_key=signing.public_pem(keys["platform"].public_key()),
        platform_public_key_id=KEY_ID, notify_url="", timeouts=Timeouts(),
    )


# -- the AEAD envelope -------------------------------------------------------------------------------------


def test_aes_gcm_round_trip_and_tampering_is_rejected() -> None:
    sealed = signing.encrypt(APIV3_KEY, "支付成功 {}".encode(), "transaction")
    assert sealed["algorithm"] == "AEAD_AES_256_GCM" and len(sealed["nonce"]) == 12
    assert signing.decrypt(APIV3_KEY, sealed) == "支付成功 {}".encode()

    raw = bytearray(base64.b64decode(sealed["ciphertext"]))
    raw[0] ^= 1
    for tampered in (
        {**sealed, "ciphertext": base64.b64encode(bytes(raw)).decode()},
        {**sealed, "associated_data": "refund"},
        {**sealed, "nonce": "AAAAAAAAAAAA"},
        {**sealed, "algorithm": "AES_128_CBC"},
    ):
        with pytest.raises(ValueError):
            signing.decrypt(APIV3_KEY, tampered)
    with pytest.raises(ValueError):
        signing.decrypt("v" * 32, sealed)  # another merchant's APIv3 key


# -- answers (channel → merchant) -------------------------------------------------------------------------


def test_answer_signature_checks(keys: dict[str, rsa.RSAPrivateKey]) -> None:
    public = keys["platform"].public_key()
    body = b'{"code_url":"weixin://wxpay/bizpayurl?pr=abc"}'

    def headers(**changes: Any) -> dict[str, str]:
        signed = signing.signed_headers(changes.pop("key", keys["platform"]), KEY_ID, body,
                                        timestamp=changes.pop("timestamp", None))
        lower = {k.lower(): v for k, v in signed.items()}
        for name, value in changes.items():
            name = name.replace("_", "-")
            if value is None:
                lower.pop(name)
            else:
                lower[name] = value
        return lower

    assert signing.check_signed(public, KEY_ID, headers(), body) is None
    assert signing.check_signed(public, KEY_ID, headers(), body.replace(b"abc", b"abd")) == "bad_signature"
    assert signing.check_signed(public, KEY_ID, headers(key=keys["other"]), body) == "bad_signature"
    assert signing.check_signed(public, KEY_ID, headers(wechatpay_signature=None), body) == "missing_signature"
    assert signing.check_signed(public, KEY_ID, headers(wechatpay_nonce=None), body) == "missing_signature"
    stale = str(int(time.time()) - 301)
    assert signing.check_signed(public, KEY_ID, headers(timestamp=stale), body) == "stale_timestamp"
    assert signing.check_signed(public, KEY_ID, headers(wechatpay_serial="PUB_KEY_ID_OTHER"), body) == "unknown_serial"
    assert signing.check_signed(public, KEY_ID, headers(wechatpay_signature_type="WECHATPAY2-SM2-WITH-SM3"),
                                body) == "bad_signature_type"


# -- notifications (channel → merchant) -------------------------------------------------------------------


def notification(
    key: rsa.RSAPrivateKey, event: str, resource: dict[str, Any], *, apiv3_key: str = APIV3_KEY,
    timestamp: str | None = None, notification_id: str = "EV-2018022511223320873",
) -> tuple[dict[str, str], bytes]:
    original_type = "transaction" if event.startswith("TRANSACTION") else "refund"
    sealed = signing.encrypt(apiv3_key, json.dumps(resource).encode(), original_type)
    body = json.dumps({
        "id": notification_id, "create_time": "2026-11-27T10:00:00+08:00", "resource_type": "encrypt-resource",
        "event_type": event, "summary": "支付成功", "resource": {"original_type": original_type, **sealed},
    }).encode()
    return signing.signed_headers(key, KEY_ID, body, timestamp=timestamp), body


PAID = {
    "mchid": MCHID, "appid": "wx0000000000000001", "out_trade_no": "ord_1", "transaction_id": "4200000000001",
    "trade_type": "NATIVE", "trade_state": "SUCCESS", "success_time": "2026-11-27T10:00:00+08:00",
    "payer": {"openid": "o1"},
    "amount": {"total": 1050, "payer_total": 1050, "currency": "CNY", "payer_currency": "CNY"},
}
REFUND = {
    "mchid": MCHID, "out_trade_no": "ord_1", "transaction_id": "4200000000001", "out_refund_no": "rfd_1",
    "refund_id": "5000000000001", "refund_status": "SUCCESS", "success_time": "2026-11-27T11:00:00+08:00",
    "user_received_account": "支付用户零钱",
    "amount": {"total": 1050, "refund": 500, "payer_total": 1050, "payer_refund": 500},
}


def test_verified_notifications_are_parsed(channel: WechatPayChannel, keys: dict[str, rsa.RSAPrivateKey]) -> None:
    headers, body = notification(keys["platform"], "TRANSACTION.SUCCESS", PAID)
    parsed = channel.parse_notification(headers=headers, body=body)
    assert parsed.notification_id == "EV-2018022511223320873" and parsed.out_trade_no == "ord_1"
    assert parsed.trade is not None and parsed.trade.status == TradeStatus.SUCCEEDED
    assert (parsed.trade.amount, parsed.trade.currency, parsed.trade.channel_trade_no) == (1050, "CNY", "4200000000001")
    assert parsed.trade.paid_at == dt.datetime(2026, 11, 27, 2, tzinfo=dt.UTC)

    expected = {"REFUND.SUCCESS": (RefundStatus.SUCCEEDED, None), "REFUND.ABNORMAL": (RefundStatus.PROCESSING,
                "refund_abnormal"), "REFUND.CLOSED": (RefundStatus.FAILED, "refund_closed")}
    for event, (status, failure_code) in expected.items():
        resource = {**REFUND, "refund_status": event.split(".")[1]}
        headers, body = notification(keys["platform"], event, resource)
        refund = channel.parse_notification(headers=headers, body=body).refund
        assert refund is not None and (refund.status, refund.failure_code, refund.amount) == (status, failure_code, 500)


def rejection(channel: WechatPayChannel, headers: dict[str, str], body: bytes) -> str:
    with pytest.raises(InvalidNotification) as raised:
        channel.parse_notification(headers=headers, body=body)
    return raised.value.reason


def test_a_verified_event_we_do_not_act_on_is_acknowledged_with_nothing_to_apply(
    channel: WechatPayChannel, keys: dict[str, rsa.RSAPrivateKey]
) -> None:
    # Rejecting it would make WeChat send it again for a day; it is kept and acknowledged instead.
    headers, body = notification(keys["platform"], "MCHTRANSFER.BILL.FINISHED", PAID)
    parsed = channel.parse_notification(headers=headers, body=body)
    assert parsed.trade is None and parsed.refund is None and parsed.notification_id


def test_forged_or_broken_notifications_are_rejected(
    channel: WechatPayChannel, keys: dict[str, rsa.RSAPrivateKey]
) -> None:
    headers, body = notification(keys["platform"], "TRANSACTION.SUCCESS", PAID)
    assert rejection(channel, headers, body.replace(b"EV-2018", b"EV-2019")) == "bad_signature"  # a tampered field
    assert rejection(channel, *notification(keys["other"], "TRANSACTION.SUCCESS", PAID)) == "bad_signature"
    assert rejection(channel, {k: v for k, v in headers.items() if k != signing.NONCE_HEADER}, body) == (
        "missing_signature")
    stale = notification(keys["platform"], "TRANSACTION.SUCCESS", PAID, timestamp=str(int(time.time()) - 600))
    assert rejection(channel, *stale) == "stale_timestamp"
    assert rejection(channel, {**headers, signing.SERIAL_HEADER: "PUB_KEY_ID_X"}, body) == "unknown_serial"
    # Signed by the platform, but sealed with another APIv3 key, or for another merchant, or not modelled.
    assert rejection(channel, *notification(keys["platform"], "TRANSACTION.SUCCESS", PAID, apiv3_key="v" * 32)) == (
        "decrypt_failed")
    assert rejection(channel, *notification(keys["platform"], "TRANSACTION.SUCCESS", {**PAID, "mchid": "1"})) == (
        "wrong_merchant")
    garbage = b"not json"
    assert rejection(channel, signing.signed_headers(keys["platform"], KEY_ID, garbage), garbage) == "malformed"


def test_a_tampered_ciphertext_is_rejected(channel: WechatPayChannel, keys: dict[str, rsa.RSAPrivateKey]) -> None:
    _, body = notification(keys["platform"], "TRANSACTION.SUCCESS", PAID)
    message = json.loads(body)
    raw = bytearray(base64.b64decode(message["resource"]["ciphertext"]))
    raw[-1] ^= 1  # the tag
    message["resource"]["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    body = json.dumps(message).encode()
    # Re-signed by the platform key: only the AEAD tag can tell.
    assert rejection(channel, signing.signed_headers(keys["platform"], KEY_ID, body), body) == "decrypt_failed"


def test_notification_replies(channel: WechatPayChannel) -> None:
    assert channel.notification_reply(accepted=True).status == 204
    failed = channel.notification_reply(accepted=False)
    assert failed.status == 400 and json.loads(failed.body)["code"] == "FAIL"


# -- requests (merchant → channel), with a client written from the published docs alone ---------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[WechatPaySimulator]:
    with WechatPaySimulator(port=0) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def account(sim: WechatPaySimulator) -> dict[str, str]:
    return httpx.post(f"{sim.base_url}/_sim/accounts", json={}).json()


def docs_client_call(
    sim: WechatPaySimulator, account: dict[str, str], method: str, url: str, payload: Any = None, *,
    key_pem: str | None = None, timestamp: int | None = None, serial_no: str | None = None,
    sent_body: bytes | None = None, authorization: bool = True,
) -> httpx.Response:
    """A request exactly as WeChat Pay's 签名生成 page describes it, without the project's signing module."""
    body = json.dumps(payload).encode() if payload is not None else b""
    ts, nonce = str(timestamp or int(time.time())), "593BEC0C930BF1AFEB40B4A08C8FB242"
    key = serialization.load_pem_private_key((key_pem or account["merchant_private_key"]).encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    message = f"{method}\n{url}\n{ts}\n{nonce}\n{body.decode()}\n".encode()
    signature = base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = (
            f'WECHATPAY2-SHA256-RSA2048 mchid="{account["mchid"]}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{ts}",serial_no="{serial_no or account["merchant_serial_no"]}"'
        )
    return httpx.request(method, sim.base_url + url, content=sent_body if sent_body is not None else body,
                         headers=headers)


def docs_client_verifies(account: dict[str, str], response: httpx.Response) -> bool:
    key = serialization.load_pem_public_key(account["platform_public_key"].encode())
    assert isinstance(key, rsa.RSAPublicKey)
    h = response.headers
    if h.get("Wechatpay-Serial") != account["platform_public_key_id"]:
        return False
    message = f"{h['Wechatpay-Timestamp']}\n{h['Wechatpay-Nonce']}\n".encode() + response.content + b"\n"
    try:
        key.verify(base64.b64decode(h["Wechatpay-Signature"]), message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def test_a_client_written_from_the_docs_works_against_the_simulator(
    sim: WechatPaySimulator, account: dict[str, str]
) -> None:
    order = {"appid": account["appid"], "mchid": account["mchid"], "description": "Image形象店-深圳腾大-QQ公仔",
             "out_trade_no": "1217752501201407033233368018", "notify_url": "https://www.weixin.qq.com/wxpay/pay.php",
             "amount": {"total": 100, "currency": "CNY"}}
    created = docs_client_call(sim, account, "POST", "/v3/pay/transactions/native", order)
    assert created.status_code == 200 and docs_client_verifies(account, created)
    assert "bizpayurl?pr=" in created.json()["code_url"]
    queried = docs_client_call(
        sim, account, "GET", f"/v3/pay/transactions/out-trade-no/{order['out_trade_no']}?mchid={account['mchid']}")
    assert queried.status_code == 200 and docs_client_verifies(account, queried)
    assert queried.json()["trade_state"] == "NOTPAY" and queried.json()["amount"]["total"] == 100
    closed = docs_client_call(sim, account, "POST", f"/v3/pay/transactions/out-trade-no/{order['out_trade_no']}/close",
                              {"mchid": account["mchid"]})
    assert closed.status_code == 204 and closed.content == b"" and docs_client_verifies(account, closed)


def test_requests_with_a_bad_signature_get_sign_error(sim: WechatPaySimulator, account: dict[str, str]) -> None:
    url = f"/v3/pay/transactions/out-trade-no/ord_unknown1?mchid={account['mchid']}"
    other_key = httpx.post(f"{sim.base_url}/_sim/accounts", json={}).json()["merchant_private_key"]
    payload = {"mchid": account["mchid"]}
    bad = [
        docs_client_call(sim, account, "POST", "/v3/pay/transactions/out-trade-no/ord_x123/close", payload,
                         sent_body=b'{"mchid": "1"}'),  # a tampered field
        docs_client_call(sim, account, "GET", url, key_pem=other_key),  # a wrong key
        docs_client_call(sim, account, "GET", url, authorization=False),  # a missing header
        docs_client_call(sim, account, "GET", url, timestamp=int(time.time()) - 301),  # a stale timestamp
        docs_client_call(sim, account, "GET", url, serial_no="0" * 40),  # another certificate
    ]
    for response in bad:
        assert response.status_code == 401 and response.json()["code"] == "SIGN_ERROR"
        assert "Wechatpay-Signature" not in response.headers  # the channel signs only what it could verify
    good = docs_client_call(sim, account, "GET", url)
    assert good.status_code == 404 and good.json()["code"] == "ORDER_NOT_EXIST" and docs_client_verifies(account, good)
