"""The Alipay simulator against Alipay's published protocol, through a client written from Alipay's documents.

The client below shares no code with channels/alipay/: it signs, sends and verifies the way the documents (and
Alipay's own SDKs) do, so the simulator cannot pass by agreeing with our adapter's mistakes. No database.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import time
import zipfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, quote_plus

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from channels.alipay import simulator as alipay_simulator
from channels.alipay.simulator import RETRY_SCHEDULE, AlipaySimulator
from tests.alipay_support import Receiver, serving

# Alipay's SDKs find the signed text with these two patterns (alipay-sdk-python, ParamConstants).
RESPONSE_BEGIN = re.compile(r'("[a-zA-z_]+_response"[ \t\n]*:[ \t\n]*\{)')
SIGN_BEGIN = re.compile(r'(\}[ \t\n]*,[ \t\n]*"sign"[ \t\n]*:[ \t\n]*")')


class DocClient:
    """`/gateway.do` as the documents describe it: common parameters, RSA2 over the sorted raw `k=v` string.
    `call` answers the verified `<method>_response` object."""

    def __init__(self, base_url: str, account: dict[str, str], charset: str = "utf-8") -> None:
        self.url, self.account, self.charset = f"{base_url}/gateway.do", account, charset
        private_key = serialization.load_pem_private_key(account["app_private_key"].encode(), None)
        alipay_key = serialization.load_pem_public_key(account["alipay_public_key"].encode())
        assert isinstance(private_key, rsa.RSAPrivateKey) and isinstance(alipay_key, rsa.RSAPublicKey)
        self.private_key, self.alipay_key = private_key, alipay_key

    def params(self, method: str, biz: dict[str, Any], **extra: str) -> dict[str, str]:
        params = {"app_id": self.account["app_id"], "method": method, "format": "JSON", "charset": self.charset,
                  "sign_type": "RSA2", "timestamp": time.strftime("%Y-%m-%d %H:%M:%S"), "version": "1.0",
                  "biz_content": json.dumps(biz, ensure_ascii=False), **extra}
        unsigned = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if v)
        signature = self.private_key.sign(unsigned.encode(self.charset), padding.PKCS1v15(), hashes.SHA256())
        return {**params, "sign": base64.b64encode(signature).decode()}

    def call(self, method: str, biz: dict[str, Any], style: str = "sdk", **extra: str) -> dict[str, Any]:
        params = self.params(method, biz, **extra)
        if style == "sdk":  # the official SDK: common parameters in the URL, biz_content in the form body
            common = {k: v for k, v in params.items() if k != "biz_content"}
            query = "&".join(f"{k}={quote_plus(v, encoding=self.charset)}" for k, v in common.items())
            body = f"biz_content={quote_plus(params['biz_content'], encoding=self.charset)}"
            response = httpx.post(f"{self.url}?{query}", content=body.encode(), headers={
                "Content-Type": f"application/x-www-form-urlencoded;charset={self.charset}"})
        elif style == "get":  # everything in the URL
            response = httpx.get(self.url, params=params)
        else:  # the documents' curl example: -F biz_content=…
            common = {k: v for k, v in params.items() if k != "biz_content"}
            response = httpx.post(self.url, params=common, files={"biz_content": (None, params["biz_content"])})
        text = response.content.decode(self.charset)
        begin, signs = RESPONSE_BEGIN.search(text), list(SIGN_BEGIN.finditer(text))
        assert begin and signs, text
        content = text[begin.end() - 1: signs[-1].start() + 1]
        signature = text[signs[-1].end(): text.find('"', signs[-1].end())]
        self.alipay_key.verify(base64.b64decode(signature), content.encode(self.charset), padding.PKCS1v15(),
                               hashes.SHA256())
        return json.loads(content)

    def verify_notification(self, body: bytes) -> dict[str, str]:
        params = dict(parse_qsl(body.decode(), keep_blank_values=True))
        signature = base64.b64decode(params.pop("sign"))
        params.pop("sign_type")
        unsigned = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
        self.alipay_key.verify(signature, unsigned.encode(), padding.PKCS1v15(), hashes.SHA256())
        return params


@pytest.fixture(scope="module")
def sim() -> Iterator[AlipaySimulator]:
    with AlipaySimulator(port=0) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def account(sim: AlipaySimulator) -> dict[str, str]:
    return httpx.post(f"{sim.base_url}/_sim/accounts", json={}).json()


@pytest.fixture
def client(sim: AlipaySimulator, account: dict[str, str]) -> DocClient:
    httpx.post(f"{sim.base_url}/_sim/reset").raise_for_status()
    httpx.post(f"{sim.base_url}/_sim/clock", json={"speed": 1000}).raise_for_status()
    return DocClient(sim.base_url, account)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    catcher = Receiver()
    with serving(catcher) as url:
        yield catcher, f"{url}/notify"


def precreate(client: DocClient, out_trade_no: str = "doc_1", amount: str = "10.50", notify_url: str = "",
              style: str = "sdk") -> dict[str, Any]:
    biz = {"out_trade_no": out_trade_no, "total_amount": amount, "subject": "测试订单"}
    return client.call("alipay.trade.precreate", biz, style, notify_url=notify_url)


def wait_for(check, timeout_s: float = 10) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return result


def notifications(sim: AlipaySimulator) -> list[dict[str, Any]]:
    """The simulator's record of doc_1's notification attempts."""
    return httpx.get(f"{sim.base_url}/_sim/trades/doc_1").json()["notifications"]


def test_accounts_are_fresh_pem_keys(account: dict[str, str], sim: AlipaySimulator) -> None:
    assert set(account) == {"app_id", "app_private_key", "app_public_key", "alipay_public_key"}
    assert account["app_private_key"].startswith("-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1, Alipay's key tool
    assert account["alipay_public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert httpx.post(f"{sim.base_url}/_sim/accounts", json={}).json()["app_id"] != account["app_id"]


@pytest.mark.parametrize("style", ["sdk", "get", "multipart"])
def test_a_client_written_from_the_documents_pays_and_refunds(client: DocClient, sim: AlipaySimulator, style) -> None:
    answer = precreate(client, style=style)
    assert (answer["code"], answer["out_trade_no"]) == ("10000", "doc_1") and answer["qr_code"]
    query = client.call("alipay.trade.query", {"out_trade_no": "doc_1"}, style)
    assert query["sub_code"] == "ACQ.TRADE_NOT_EXIST"  # not scanned yet
    httpx.post(answer["qr_code"], data={"action": "pay"}).raise_for_status()
    query = client.call("alipay.trade.query", {"out_trade_no": "doc_1"}, style)
    assert (query["trade_status"], query["total_amount"]) == ("TRADE_SUCCESS", "10.50") and query["send_pay_date"]
    refund = client.call("alipay.trade.refund", {"out_trade_no": "doc_1", "refund_amount": "0.50",
                                                 "out_request_no": "r1"}, style)
    assert (refund["fund_change"], refund["refund_fee"]) == ("Y", "0.50")
    found = client.call("alipay.trade.fastpay.refund.query", {"out_trade_no": "doc_1", "out_request_no": "r1"}, style)
    assert found["refund_status"] == "REFUND_SUCCESS"
    assert httpx.get(f"{sim.base_url}/_sim/trades/doc_1").json()["create_calls"] == 1


def test_gbk_requests_get_gbk_answers(sim: AlipaySimulator, account: dict[str, str], client: DocClient) -> None:
    gbk = DocClient(sim.base_url, account, charset="gbk")
    assert precreate(gbk)["code"] == "10000"
    answer = gbk.call("alipay.trade.close", {"out_trade_no": "nope"})
    assert answer["sub_msg"] == "交易不存在"


@pytest.mark.parametrize(
    ("biz", "sub_code"),
    [
        ({"total_amount": "10.505"}, "ACQ.INVALID_PARAMETER"),  # a third decimal
        ({"total_amount": "0.00"}, "ACQ.INVALID_PARAMETER"),
        ({"total_amount": 10.5}, None),  # a JSON number is fine
        ({"total_amount": "100000000.01"}, "ACQ.TOTAL_FEE_EXCEED"),
        ({"out_trade_no": "has space"}, "ACQ.INVALID_PARAMETER"),
    ],
)
def test_precreate_checks_its_business_parameters(client: DocClient, biz: dict, sub_code: str | None) -> None:
    full = {"out_trade_no": "doc_1", "total_amount": "1.00", "subject": "s", **biz}
    answer = client.call("alipay.trade.precreate", full)
    assert answer.get("sub_code") == sub_code


def test_a_refund_without_out_request_no_refunds_the_whole_trade(client: DocClient) -> None:
    httpx.post(precreate(client)["qr_code"], data={"action": "pay"}).raise_for_status()
    partial = client.call("alipay.trade.refund", {"out_trade_no": "doc_1", "refund_amount": "1.00"})
    assert partial["sub_code"] == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    full = client.call("alipay.trade.refund", {"out_trade_no": "doc_1", "refund_amount": "10.50"})
    assert full["fund_change"] == "Y"
    query = client.call("alipay.trade.query", {"out_trade_no": "doc_1"})
    assert query["trade_status"] == "TRADE_CLOSED"


def test_unknown_and_missing_methods(sim: AlipaySimulator, client: DocClient) -> None:
    unknown = httpx.post(f"{sim.base_url}/gateway.do", data=client.params("alipay.trade.nothing", {})).json()
    assert unknown["error_response"]["sub_code"] == "isv.invalid-method"
    missing = httpx.post(f"{sim.base_url}/gateway.do", data={}).json()
    assert missing["error_response"]["sub_code"] == "isv.missing-method"


# -- notifications -----------------------------------------------------------------------------------------


def test_notifications_are_retried_on_alipays_schedule_until_the_body_is_success(client, sim, receiver) -> None:
    catcher, url = receiver
    assert RETRY_SCHEDULE == (240, 600, 600, 3600, 7200, 21600, 54000)  # 4m 10m 10m 1h 2h 6h 15h
    catcher.reply = b"SUCCESS"  # not Alipay's word: retried
    httpx.post(precreate(client, notify_url=url)["qr_code"], data={"action": "pay"}).raise_for_status()
    wait_for(lambda: len(catcher.bodies) >= 2)
    catcher.reply = b"success"
    wait_for(lambda: any(a["acknowledged"] for a in notifications(sim)))
    seen = [client.verify_notification(body) for body in catcher.bodies]
    assert {n["notify_id"] for n in seen} == {seen[0]["notify_id"]}  # the same notify_id on every retry
    first = seen[0]
    assert (first["notify_type"], first["trade_status"], first["total_amount"]) == (
        "trade_status_sync", "TRADE_SUCCESS", "10.50"
    )
    assert first["app_id"] == client.account["app_id"] and first["gmt_payment"] and first["trade_no"]
    assert catcher.headers[0]["Content-Type"].startswith("application/x-www-form-urlencoded")


def test_a_refund_notifies_the_trade_status(client: DocClient, receiver) -> None:
    catcher, url = receiver
    httpx.post(precreate(client, notify_url=url)["qr_code"], data={"action": "pay"}).raise_for_status()
    for number, amount in (("r1", "0.50"), ("r2", "10.00")):
        client.call("alipay.trade.refund", {"out_trade_no": "doc_1", "refund_amount": amount, "out_request_no": number})
    seen = [client.verify_notification(b) for b in wait_for(lambda: len(catcher.bodies) >= 3 and catcher.bodies)]
    partial, full = [n for n in seen if "out_biz_no" in n]
    assert (partial["trade_status"], partial["out_biz_no"], partial["refund_fee"]) == ("TRADE_SUCCESS", "r1", "0.50")
    assert (full["trade_status"], full["refund_fee"]) == ("TRADE_CLOSED", "10.50") and full["gmt_refund"]


@pytest.mark.parametrize("mode", ["drop_notify", "duplicate_notify", "tamper_amount_notify", "bad_signature_notify"])
def test_notify_faults(client: DocClient, sim: AlipaySimulator, receiver, mode: str) -> None:
    catcher, url = receiver
    httpx.post(f"{sim.base_url}/_sim/faults", json={"operation": "notify", "mode": mode, "count": 1}).raise_for_status()
    catcher.reply = b"fail" if mode == "bad_signature_notify" else b"success"  # what our callback would answer
    httpx.post(precreate(client, notify_url=url)["qr_code"], data={"action": "pay"}).raise_for_status()
    expected = 2 if mode in ("duplicate_notify", "bad_signature_notify") else 1
    bodies = wait_for(lambda: len(catcher.bodies) >= expected and catcher.bodies)
    if mode == "drop_notify":
        attempts = wait_for(lambda: len(n := notifications(sim)) >= 2 and n)
        # The first attempt never reached the receiver; the retry (4 simulated minutes later) did.
        assert [a["acknowledged"] for a in attempts] == [False, True] and len(bodies) == 1
    elif mode == "duplicate_notify":
        assert bodies[0] == bodies[1]
    elif mode == "tamper_amount_notify":
        assert client.verify_notification(bodies[0])["total_amount"] == "10.51"  # validly signed, wrong amount
    else:
        with pytest.raises(Exception):  # noqa: B017 (cryptography's InvalidSignature)
            client.verify_notification(bodies[0])
        client.verify_notification(bodies[1])


# -- bills -------------------------------------------------------------------------------------------------


def bill(client: DocClient, day: str) -> dict[str, Any]:
    return client.call("alipay.data.dataservice.bill.downloadurl.query", {"bill_type": "trade", "bill_date": day})


def test_the_bill_is_a_zip_of_gbk_csvs_in_alipays_format(client: DocClient, monkeypatch) -> None:
    httpx.post(precreate(client)["qr_code"], data={"action": "pay"}).raise_for_status()
    client.call("alipay.trade.refund", {"out_trade_no": "doc_1", "refund_amount": "0.50", "out_request_no": "r1"})
    today = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 8 * 3600))  # Beijing time
    archive = zipfile.ZipFile(io.BytesIO(httpx.get(bill(client, today)["bill_download_url"]).content))
    names = archive.namelist()
    assert len(names) == 2 and any(n.endswith("_业务明细.csv") for n in names)
    detail = archive.read(next(n for n in names if n.endswith("_业务明细.csv"))).decode("gbk")
    lines = detail.splitlines()
    assert lines[0] == "#支付宝业务明细查询" and lines[-1].startswith("#导出时间：")
    rows = list(csv.reader(line for line in lines if not line.startswith("#")))
    assert len(rows[0]) == 25 and rows[0][0] == "支付宝交易号" and rows[0][-1] == "备注"
    assert all(cell.endswith("\t") for cell in rows[1])  # trailing tabs
    body = [[cell.strip() for cell in row] for row in rows[1:]]
    assert [(r[1], r[2], r[11], r[21]) for r in body] == [
        ("doc_1", "交易", "10.50", ""), ("doc_1", "退款", "-0.50", "r1")
    ]
    summary = archive.read(next(n for n in names if "汇总" in n)).decode("gbk")
    assert summary.startswith("#支付宝业务汇总查询")
    # The download URL is good for a short while only.
    monkeypatch.setattr(alipay_simulator, "BILL_URL_TTL_S", -1)
    assert httpx.get(bill(client, today)["bill_download_url"]).status_code == 404


def test_a_bill_for_a_day_to_come_does_not_exist(client: DocClient) -> None:
    assert bill(client, "2999-01-01")["sub_code"] == "isp.bill_not_exist"
