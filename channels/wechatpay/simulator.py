"""The WeChat Pay API v3 simulator: the channel's gateway as a separate HTTP server (SIMULATORS.md).

Run it with `python manage.py run_simulator wechatpay`. It speaks the published protocol that adapter.py follows:
Native 下单, 查询订单 (by out_trade_no or transaction_id), 关闭订单, 退款申请, 查询单笔退款, 申请交易账单 and its
download, requests signed by the merchant's key (a wrong one is answered `401 SIGN_ERROR`, unsigned), answers and
notifications signed by the account's platform key in the platform public key mode, notification resources
sealed with AEAD_AES_256_GCM under the account's APIv3 key, and the channel's notification retry schedule.

Where the real channel cannot be copied, this is what it does instead:
- `code_url`: the real one is `weixin://wxpay/bizpayurl?pr=…`, which only the WeChat app opens. Here it is the payer
  page's http URL of the same shape, `<public base>/wxpay/bizpayurl?pr=…`. Clients treat `code_url` as opaque
  text to put in a QR code, so they work unchanged, and our `pay_url` is the `code_url`.
- The payer page also takes `action=scan`: the payer scanned the code and is entering the password
  (`USERPAYING`; a close then answers `202 USER_PAYING`).
- A refund is accepted `PROCESSING` and succeeds REFUND_SETTLE_S simulated seconds later, then notifies
  `REFUND.SUCCESS` to the request's `notify_url`, or else to the trade's (standing in for the address set in the
  merchant platform).
- The `refuse` fault answers `403 NOT_ENOUGH` (the merchant's balance) to refunds and `403 TRADE_ERROR` otherwise.
- Closing a paid trade answers `403 TRADE_ERROR`; an unpaid trade past its `time_expire` reads `CLOSED`.
- Numbers are unique across the whole simulator (the payer page names no merchant); another merchant's trade
  reads as not found. Bills are made on demand; a day to come answers NO_STATEMENT_EXIST.
"""

from __future__ import annotations

import argparse
import base64
import csv
import gzip
import hashlib
import html
import io
import json
import os
import re
import secrets
import string
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric import rsa

from channels.money import to_major
from channels.simulator import (
    BadRequest,
    ChannelSimulator,
    Notification,
    Request,
    Response,
    added_row_time,
    run_forever,
)
from channels.wechatpay import signing

DEFAULT_PORT = 8103
# The channel's published notification schedule: 15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h.
RETRY_SCHEDULE = (15.0, 15.0, 30.0, 180.0, 600.0, 1200.0, 1800.0, 1800.0, 1800.0, 3600.0,
                  10800.0, 10800.0, 10800.0, 21600.0, 21600.0)
REFUND_SETTLE_S = 1.0  # simulated seconds from PROCESSING to SUCCESS
BILL_TOKEN_TTL_S = 300.0
SHANGHAI = timezone(timedelta(hours=8), "Asia/Shanghai")
MAX_AMOUNT = 10**12
OUT_TRADE_NO_RE = re.compile(r"[0-9A-Za-z_\-|*@]{6,32}")
OUT_REFUND_NO_RE = re.compile(r"[0-9A-Za-z_\-|*@]{1,64}")
STATE_DESC = {
    "SUCCESS": "支付成功", "REFUND": "转入退款", "NOTPAY": "未支付", "CLOSED": "已关闭", "USERPAYING": "用户支付中",
}
PAID = ("SUCCESS", "REFUND")
BILL_HEADER = [
    "交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号", "用户标识", "交易类型",
    "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额", "微信退款单号", "商户退款单号", "退款金额",
    "充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包", "手续费", "费率", "订单金额", "申请退款金额",
    "费率备注",
]
BILL_SUMMARY = [
    "总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额", "申请退款总金额",
]
FEE_RATE = Decimal("0.006")


@dataclass(eq=False)
class Account:
    mchid: str
    appid: str
    merchant_public_key: rsa.RSAPublicKey
    merchant_serial_no: str
    apiv3_key: str
    platform_private_key: rsa.RSAPrivateKey
    platform_public_key_id: str

    @classmethod
    def from_pems(
        cls, *, mchid: str, appid: str, merchant_public_key: str, merchant_serial_no: str, apiv3_key: str,
        platform_private_key: str, platform_public_key_id: str,
    ) -> Account:
        return cls(mchid, appid, signing.load_public_key(merchant_public_key), merchant_serial_no, apiv3_key,
                   signing.load_private_key(platform_private_key), platform_public_key_id)


@dataclass(eq=False)
class Refund:
    trade: Trade
    out_refund_no: str
    refund_id: str
    amount: int
    reason: str
    notify_url: str
    created_at: float
    status: str = "PROCESSING"
    success_time: float | None = None


@dataclass(eq=False)
class Trade:
    account: Account
    out_trade_no: str
    transaction_id: str
    pr: str
    amount: int
    currency: str
    description: str
    notify_url: str
    time_expire: float | None
    created_at: float
    trade_state: str = "NOTPAY"
    success_time: float | None = None
    openid: str = ""
    failed_attempts: int = 0
    refunds: list[Refund] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)


def _cst(t: float | None) -> str | None:
    """RFC 3339 in the channel's time zone, as it writes times: 2018-06-08T10:34:56+08:00."""
    return datetime.fromtimestamp(t, SHANGHAI).isoformat(timespec="seconds") if t is not None else None


def _digits(n: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(n))


def _corrupt(signature: str) -> str:
    raw = bytearray(base64.b64decode(signature))
    raw[0] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _text(body: dict[str, Any], name: str, max_len: int, required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not (isinstance(value, str) and 0 < len(value) <= max_len):
        raise BadRequest(f"{name} must be a string of 1-{max_len} characters")
    return value


def _number(body: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = body.get(name)
    if not (isinstance(value, str) and pattern.fullmatch(value)):
        raise BadRequest(f"{name} is missing or malformed")
    return value


def _fen(amount: Any, name: str) -> int:
    value = amount.get(name) if isinstance(amount, dict) else None
    if not (type(value) is int and 0 < value <= MAX_AMOUNT):
        raise BadRequest(f"amount.{name} must be a positive integer of fen")
    return value


def _yuan_fee(fen: int) -> str:
    return f"{(Decimal(fen) * FEE_RATE / 100).quantize(Decimal('0.00001'))}"


class WechatPaySimulator(ChannelSimulator):
    name = "wechatpay"
    retry_schedule = RETRY_SCHEDULE

    def __init__(
        self,
        accounts: Iterable[Account] = (),
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        public_base_url: str | None = None,
        notify_hosts: Iterable[str] = (),
    ) -> None:
        super().__init__(host, port, public_base_url, notify_hosts)
        self.accounts: dict[str, Account] = {a.mchid: a for a in accounts}
        self.trades: dict[str, Trade] = {}
        self.by_pr: dict[str, Trade] = {}
        self.refunds: dict[str, Refund] = {}
        self.bills: dict[str, tuple[Account, bytes, float]] = {}
        self._generation = 0  # bumped by reset, so that refunds scheduled before it never settle after it
        number = r"(?P<out_trade_no>[^/]+)"
        self.route("POST", r"/v3/pay/transactions/native", self._create, "create")
        self.route("GET", rf"/v3/pay/transactions/out-trade-no/{number}", self._query, "query")
        self.route("GET", r"/v3/pay/transactions/id/(?P<transaction_id>[^/]+)", self._query_by_id, "query")
        self.route("POST", rf"/v3/pay/transactions/out-trade-no/{number}/close", self._close, "close")
        self.route("POST", r"/v3/refund/domestic/refunds", self._refund, "refund")
        self.route("GET", r"/v3/refund/domestic/refunds/(?P<out_refund_no>[^/]+)", self._refund_query, "refund_query")
        self.route("GET", r"/v3/bill/tradebill", self._bill, "bill")
        self.route("GET", r"/v3/billdownload/file", self._bill_download, "bill")
        self.route("GET", r"/wxpay/bizpayurl", self._pay_page)
        self.route("POST", r"/wxpay/bizpayurl", self._pay_action)

    # -- hooks -----------------------------------------------------------------------------------------------

    def authenticate(self, req: Request) -> tuple[Any, Response | None]:
        params = signing.parse_authorization(req.headers.get("Authorization"))
        account = self.accounts.get((params or {}).get("mchid", ""))
        if params is None:
            problem = "missing Authorization or not WECHATPAY2-SHA256-RSA2048"
        elif account is None:
            problem = "unknown mchid"
        elif params.get("serial_no") != account.merchant_serial_no:
            problem = "serial_no names no certificate of this merchant"
        elif not signing.timestamp_fresh(params.get("timestamp")):
            problem = "timestamp missing or more than 5 minutes away"
        elif not signing.verify(
            account.merchant_public_key,
            signing.request_message(req.method, req.target, params.get("timestamp", ""), params.get("nonce_str", ""),
                                    req.body),
            params.get("signature", ""),
        ):
            problem = "signature does not verify"
        else:
            return account, None
        # Unsigned: the gateway signs answers only to requests whose signature it verified.
        return None, Response.json(401, {"code": "SIGN_ERROR", "message": f"签名错误: {problem}"})

    def before_operation(self, operation: str, req: Request, ctx: Any) -> None:
        if operation == "create":
            try:
                body = req.json()
            except ValueError:
                return
            if isinstance(body, dict) and isinstance(body.get("out_trade_no"), str):
                self.count_create(body["out_trade_no"])

    def fault_response(self, mode: str, operation: str, ctx: Any) -> Response:
        if mode == "refuse":
            if operation == "refund":
                return self._error(ctx, 403, "NOT_ENOUGH", "基本账户余额不足，请充值后重新发起")
            return self._error(ctx, 403, "TRADE_ERROR", "交易错误: 风险控制拒绝")
        if mode == "rate_limit":
            return self._error(ctx, 429, "FREQUENCY_LIMITED", "请求频率超限，请降低请求频率")
        return self._error(ctx, 500, "SYSTEM_ERROR", "系统错误，请稍后重试")

    def trade_snapshot(self, out_trade_no: str) -> dict[str, Any] | None:
        trade = self._lookup(out_trade_no)
        if trade is None:
            return None
        return {
            "out_trade_no": trade.out_trade_no,
            "transaction_id": trade.transaction_id if trade.trade_state in PAID else None,
            "status": trade.trade_state,
            "amount": trade.amount,
            "currency": trade.currency,
            "create_calls": self.create_calls.get(out_trade_no, 0),
            "paid_at": _cst(trade.success_time),
            "refunds": [
                {"out_refund_no": r.out_refund_no, "amount": r.amount, "status": r.status} for r in trade.refunds
            ],
            "notifications": self.notification_attempts(trade.notifications),
        }

    def open_account(self, body: Any) -> dict[str, Any]:
        merchant_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        platform_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        mchid = "19" + _digits(8)
        while mchid in self.accounts:
            mchid = "19" + _digits(8)
        account = Account(
            mchid=mchid,
            appid="wx" + secrets.token_hex(8),
            merchant_public_key=merchant_key.public_key(),
            merchant_serial_no=secrets.token_hex(20).upper(),
            apiv3_key="".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32)),
            platform_private_key=platform_key,
            platform_public_key_id="PUB_KEY_ID_" + _digits(32),
        )
        self.accounts[mchid] = account
        return {
            "mchid": account.mchid,
            "appid": account.appid,
            "merchant_private_key": signing.private_pem(merchant_key),
            "merchant_serial_no": account.merchant_serial_no,
            "apiv3_key": account.apiv3_key,
            "platform_public_key": signing.public_pem(platform_key.public_key()),
            "platform_public_key_id": account.platform_public_key_id,
        }

    def reset_state(self) -> None:
        self.trades.clear()
        self.by_pr.clear()
        self.refunds.clear()
        self.bills.clear()
        self._generation += 1

    # -- answers ---------------------------------------------------------------------------------------------

    def _answer(self, account: Account, status: int, obj: Any = None) -> Response:
        body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() if obj is not None else b""
        headers = {"Content-Type": "application/json; charset=utf-8"} if obj is not None else {}
        headers["Request-ID"] = uuid.uuid4().hex.upper()
        headers.update(signing.signed_headers(account.platform_private_key, account.platform_public_key_id, body))
        return Response(status, body, headers)

    def _error(self, account: Account, status: int, code: str, message: str) -> Response:
        return self._answer(account, status, {"code": code, "message": message})

    def _trade_json(self, trade: Trade) -> dict[str, Any]:
        paid = trade.trade_state in PAID
        data: dict[str, Any] = {
            "appid": trade.account.appid,
            "mchid": trade.account.mchid,
            "out_trade_no": trade.out_trade_no,
            "trade_type": "NATIVE",
            "trade_state": trade.trade_state,
            "trade_state_desc": STATE_DESC.get(trade.trade_state, ""),
            "attach": "",
            "amount": {"total": trade.amount, "currency": trade.currency, "payer_currency": trade.currency},
        }
        if paid:
            data.update(transaction_id=trade.transaction_id, bank_type="OTHERS", success_time=_cst(trade.success_time),
                        payer={"openid": trade.openid})
            data["amount"]["payer_total"] = trade.amount
        return data

    @staticmethod
    def _refund_json(refund: Refund) -> dict[str, Any]:
        trade = refund.trade
        return {
            "refund_id": refund.refund_id,
            "out_refund_no": refund.out_refund_no,
            "transaction_id": trade.transaction_id,
            "out_trade_no": trade.out_trade_no,
            "channel": "ORIGINAL",
            "user_received_account": "支付用户零钱",
            **({"success_time": _cst(refund.success_time)} if refund.success_time is not None else {}),
            "create_time": _cst(refund.created_at),
            "status": refund.status,
            "funds_account": "AVAILABLE",
            "amount": {
                "total": trade.amount, "refund": refund.amount, "payer_total": trade.amount,
                "payer_refund": refund.amount, "settlement_total": trade.amount, "settlement_refund": refund.amount,
                "discount_refund": 0, "currency": trade.currency,
            },
        }

    # -- ledger ----------------------------------------------------------------------------------------------

    def _lookup(self, out_trade_no: str, account: Account | None = None) -> Trade | None:
        with self.lock:
            trade = self.trades.get(out_trade_no)
            if trade is None or (account is not None and trade.account is not account):
                return None
            # Expiry is applied lazily, whenever the trade is looked at.
            if trade.trade_state in ("NOTPAY", "USERPAYING") and trade.time_expire and time.time() >= trade.time_expire:
                trade.trade_state = "CLOSED"
            return trade

    def _notify(self, trade: Trade, url: str, event_type: str, summary: str, resource: dict[str, Any]) -> None:
        """Notify ``url`` of an event whose decrypted ``resource`` is taken now, as the channel would."""
        if not url:
            return
        account, original_type = trade.account, "transaction" if event_type.startswith("TRANSACTION") else "refund"
        notification_id, create_time = str(uuid.uuid4()), _cst(time.time())

        def render(tamper_amount: bool, bad_signature: bool) -> tuple[bytes, dict[str, str]]:
            plain = json.loads(json.dumps(resource))
            if tamper_amount:
                for name in ("total", "refund", "payer_total", "payer_refund"):
                    if name in plain["amount"]:
                        plain["amount"][name] += 1
            sealed = signing.encrypt(account.apiv3_key, json.dumps(plain, ensure_ascii=False).encode(), original_type)
            body = json.dumps({
                "id": notification_id, "create_time": create_time, "resource_type": "encrypt-resource",
                "event_type": event_type, "summary": summary, "resource": {"original_type": original_type, **sealed},
            }, ensure_ascii=False).encode()
            headers = {"Content-Type": "application/json",
                       **signing.signed_headers(account.platform_private_key, account.platform_public_key_id, body)}
            if bad_signature:
                headers[signing.SIGNATURE_HEADER] = _corrupt(headers[signing.SIGNATURE_HEADER])
            return body, headers

        notification = Notification(notification_id, event_type, url, render, key=trade.out_trade_no)
        trade.notifications.append(notification)
        self.notify(notification)

    def _settle_refund(self, refund: Refund, generation: int) -> None:
        with self.lock:
            if generation != self._generation or refund.status != "PROCESSING":
                return
            refund.status, refund.success_time = "SUCCESS", time.time()
            trade = refund.trade
            self._notify(trade, refund.notify_url or trade.notify_url, "REFUND.SUCCESS", "退款成功", {
                "mchid": trade.account.mchid,
                "out_trade_no": trade.out_trade_no,
                "transaction_id": trade.transaction_id,
                "out_refund_no": refund.out_refund_no,
                "refund_id": refund.refund_id,
                "refund_status": refund.status,
                "success_time": _cst(refund.success_time),
                "user_received_account": "支付用户零钱",
                "amount": {"total": trade.amount, "refund": refund.amount, "payer_total": trade.amount,
                           "payer_refund": refund.amount},
            })

    # -- operations ------------------------------------------------------------------------------------------

    def _create(self, req: Request, account: Account) -> Response:
        try:
            body = req.json_object()
            appid, mchid = _text(body, "appid", 32), _text(body, "mchid", 32)
            description = _text(body, "description", 127)
            out_trade_no = _number(body, "out_trade_no", OUT_TRADE_NO_RE)
            notify_url = _text(body, "notify_url", 256)
            if not notify_url.startswith(("http://", "https://")):
                raise BadRequest("notify_url must be an http(s) URL")
            amount = _fen(body.get("amount"), "total")
            currency = body["amount"].get("currency", "CNY")
            if currency != "CNY":
                raise BadRequest("amount.currency must be CNY")
            expire = body.get("time_expire")
            time_expire = datetime.fromisoformat(expire).timestamp() if expire is not None else None
            if expire is not None and datetime.fromisoformat(expire).tzinfo is None:
                raise BadRequest("time_expire must be RFC 3339 with an offset")
        except (BadRequest, TypeError, ValueError) as exc:
            return self._error(account, 400, "PARAM_ERROR", f"参数错误: {exc}")
        if mchid != account.mchid:
            return self._error(account, 400, "PARAM_ERROR", "mchid与请求的商户号不一致")
        if appid != account.appid:
            return self._error(account, 400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        with self.lock:
            trade = self._lookup(out_trade_no)
            if trade is None:
                trade = Trade(account, out_trade_no, "4200" + _digits(24), secrets.token_urlsafe(9), amount, currency,
                              description, notify_url, time_expire, time.time())
                self.trades[out_trade_no] = trade
                self.by_pr[trade.pr] = trade
            elif trade.account is not account or (trade.amount, trade.description) != (amount, description):
                return self._error(account, 403, "OUT_TRADE_NO_USED", "商户订单号重复")
            elif trade.trade_state == "CLOSED":
                return self._error(account, 400, "ORDER_CLOSED", "订单已关闭")
            elif trade.trade_state in PAID:
                return self._error(account, 403, "TRADE_ERROR", "订单已支付")
            # The same out_trade_no with the same parameters is the same trade: its code_url again.
            return self._answer(account, 200, {"code_url": f"{self.public_base_url}/wxpay/bizpayurl?pr={trade.pr}"})

    def _query(self, req: Request, account: Account, out_trade_no: str) -> Response:
        if req.query.get("mchid") != account.mchid:
            return self._error(account, 400, "PARAM_ERROR", "参数错误: mchid")
        with self.lock:
            trade = self._lookup(out_trade_no, account)
            if trade is None:
                return self._error(account, 404, "ORDER_NOT_EXIST", "订单不存在")
            return self._answer(account, 200, self._trade_json(trade))

    def _query_by_id(self, req: Request, account: Account, transaction_id: str) -> Response:
        if req.query.get("mchid") != account.mchid:
            return self._error(account, 400, "PARAM_ERROR", "参数错误: mchid")
        with self.lock:
            found = [t for t in self.trades.values() if t.transaction_id == transaction_id and t.trade_state in PAID]
            trade = self._lookup(found[0].out_trade_no, account) if found else None
            if trade is None:
                return self._error(account, 404, "ORDER_NOT_EXIST", "订单不存在")
            return self._answer(account, 200, self._trade_json(trade))

    def _close(self, req: Request, account: Account, out_trade_no: str) -> Response:
        try:
            if req.json_object().get("mchid") != account.mchid:
                raise BadRequest("mchid")
        except BadRequest as exc:
            return self._error(account, 400, "PARAM_ERROR", f"参数错误: {exc}")
        with self.lock:
            trade = self._lookup(out_trade_no, account)
            if trade is None:
                return self._error(account, 404, "ORDER_NOT_EXIST", "订单不存在")
            if trade.trade_state in PAID:
                return self._error(account, 403, "TRADE_ERROR", "订单已支付，不能关单")
            if trade.trade_state == "USERPAYING":
                return self._error(account, 202, "USER_PAYING", "用户支付中，需要输入密码")
            if trade.trade_state == "CLOSED":
                return self._error(account, 400, "ORDER_CLOSED", "订单已关闭")
            trade.trade_state = "CLOSED"
            return self._answer(account, 204)

    def _refund(self, req: Request, account: Account) -> Response:
        try:
            body = req.json_object()
            out_trade_no = body.get("out_trade_no")
            transaction_id = body.get("transaction_id")
            if not isinstance(out_trade_no, str) and not isinstance(transaction_id, str):
                raise BadRequest("out_trade_no or transaction_id is required")
            out_refund_no = _number(body, "out_refund_no", OUT_REFUND_NO_RE)
            reason = _text(body, "reason", 80, required=False)
            notify_url = _text(body, "notify_url", 256, required=False)
            amount, total = _fen(body.get("amount"), "refund"), _fen(body.get("amount"), "total")
            currency = body["amount"].get("currency")
        except (BadRequest, TypeError) as exc:
            return self._error(account, 400, "PARAM_ERROR", f"参数错误: {exc}")
        with self.lock:
            if not isinstance(out_trade_no, str):
                out_trade_no = next((t.out_trade_no for t in self.trades.values()
                                     if t.transaction_id == transaction_id and t.trade_state in PAID), "")
            trade = self._lookup(out_trade_no, account)
            if trade is None:
                return self._error(account, 404, "RESOURCE_NOT_EXISTS", "订单不存在")
            existing = self.refunds.get(out_refund_no)
            if existing is not None:
                # The same out_refund_no is the same refund, never a second one.
                if existing.trade is not trade or existing.amount != amount:
                    return self._error(account, 400, "INVALID_REQUEST", "退款单号已存在，且退款金额或订单不一致")
                return self._answer(account, 200, self._refund_json(existing))
            if total != trade.amount or currency != trade.currency:
                return self._error(account, 400, "PARAM_ERROR", "参数错误: 订单金额或币种与原订单不一致")
            if trade.trade_state == "CLOSED":
                return self._error(account, 400, "ORDER_CLOSED", "订单已关闭")
            if trade.trade_state not in PAID:
                return self._error(account, 400, "INVALID_REQUEST", "订单未支付")
            if sum(r.amount for r in trade.refunds if r.status != "CLOSED") + amount > trade.amount:
                return self._error(account, 400, "INVALID_REQUEST", "申请退款金额超过订单可退金额")
            refund = Refund(trade, out_refund_no, "50" + _digits(27), amount, reason, notify_url, time.time())
            self.refunds[out_refund_no] = refund
            trade.refunds.append(refund)
            trade.trade_state = "REFUND"
            timer = threading.Timer(REFUND_SETTLE_S / self.clock.speed, self._settle_refund,
                                    (refund, self._generation))
            timer.daemon = True
            timer.start()
            return self._answer(account, 200, self._refund_json(refund))

    def _refund_query(self, req: Request, account: Account, out_refund_no: str) -> Response:
        with self.lock:
            refund = self.refunds.get(out_refund_no)
            if refund is None or refund.trade.account is not account:
                return self._error(account, 404, "RESOURCE_NOT_EXISTS", "退款单不存在")
            return self._answer(account, 200, self._refund_json(refund))

    # -- bills -----------------------------------------------------------------------------------------------

    def _bill(self, req: Request, account: Account) -> Response:
        query = req.query
        day, bill_type = query.get("bill_date", ""), query.get("bill_type", "ALL")
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
                raise ValueError
            date.fromisoformat(day)
        except ValueError:
            return self._error(account, 400, "PARAM_ERROR", "参数错误: bill_date 格式为 YYYY-MM-DD")
        if bill_type not in ("ALL", "SUCCESS", "REFUND") or query.get("tar_type", "GZIP") != "GZIP":
            return self._error(account, 400, "PARAM_ERROR", "参数错误: bill_type 或 tar_type")
        # Unlike WeChat Pay, today's bill (so far) is served too, so that tests need not wait for tomorrow; a
        # day to come has none yet.
        if day > datetime.now(SHANGHAI).date().isoformat():
            return self._error(account, 400, "NO_STATEMENT_EXIST", "账单不存在")
        content = self._bill_file(account, day, bill_type)
        token = secrets.token_urlsafe(24)
        # The hash is of the bill itself; asked for GZIP, the download is compressed.
        download = gzip.compress(content) if "tar_type" in query else content
        with self.lock:
            self.bills[token] = (account, download, time.monotonic() + BILL_TOKEN_TTL_S)
        # The client reached us at its own base URL; the download address is on the same host.
        host = req.headers.get("Host") or f"{self.host}:{self.port}"
        return self._answer(account, 200, {
            "hash_type": "SHA1",
            "hash_value": hashlib.sha1(content).hexdigest(),
            "download_url": f"http://{host}/v3/billdownload/file?token={quote(token)}",
        })

    def _bill_download(self, req: Request, account: Account) -> Response:
        with self.lock:
            account_, content, expires = self.bills.get(req.query.get("token", ""), (None, b"", 0.0))
        if account_ is not account or time.monotonic() > expires:
            return self._error(account, 400, "INVALID_REQUEST", "下载地址无效或已过期")
        # The file is not signed: the SHA1 in the signed tradebill answer vouches for it.
        return Response(200, content, {"Content-Type": "application/octet-stream"})

    def _bill_file(self, account: Account, day: str, bill_type: str) -> bytes:
        """The trade bill of ``day`` (Asia/Shanghai): payments by success time, refunds by acceptance time."""

        def on_day(t: float | None) -> bool:
            return t is not None and datetime.fromtimestamp(t, SHANGHAI).date().isoformat() == day

        def when(t: float) -> str:
            return datetime.fromtimestamp(t, SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")

        def payment(trade: Trade, amount: int, state: str, at: str, transaction_id: str) -> dict[str, Any]:
            return {"at": at, "transaction_id": transaction_id, "out_trade_no": trade.out_trade_no, "state": state,
                    "settle": amount, "order": amount, "refund": 0, "refund_req": 0, "fee": _yuan_fee(amount),
                    "openid": trade.openid, "description": trade.description, "currency": trade.currency}

        rows: list[dict[str, Any]] = []
        with self.lock:
            for trade in self.trades.values():
                if trade.account is not account:
                    continue
                if bill_type != "REFUND" and trade.trade_state in PAID and on_day(trade.success_time):
                    assert trade.success_time is not None
                    rows.append(payment(trade, trade.amount, "SUCCESS", when(trade.success_time), trade.transaction_id))
                for refund in trade.refunds:
                    if bill_type != "SUCCESS" and on_day(refund.created_at):
                        rows.append({**payment(trade, 0, "REFUND", when(refund.created_at), trade.transaction_id),
                                     "refund": refund.amount, "refund_req": refund.amount,
                                     "fee": "-" + _yuan_fee(refund.amount), "refund_id": refund.refund_id,
                                     "out_refund_no": refund.out_refund_no, "refund_status": refund.status})
            adjustment = self.bill_adjustments.get(day)
            if adjustment is not None and bill_type != "REFUND":
                # Adjustments alter payment rows only, to make reconciliation discrepancies.
                rows = [r for r in rows if r["state"] != "SUCCESS" or r["out_trade_no"] not in adjustment.drop]
                for row in rows:
                    if row["state"] == "SUCCESS" and row["out_trade_no"] in adjustment.amount:
                        row["settle"] = row["order"] = adjustment.amount[row["out_trade_no"]]
                for extra in adjustment.add:
                    fake = Trade(account, extra["out_trade_no"], "", "", extra["amount"], "CNY", "", "", None, 0.0)
                    rows.append(payment(fake, extra["amount"], str(extra.get("status") or "SUCCESS"),
                                        when(added_row_time(extra, day, SHANGHAI)), "4200" + _digits(24)))
        rows.sort(key=lambda r: r["at"])
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(BILL_HEADER)
        for r in rows:
            writer.writerow("`" + str(v) for v in (
                r["at"], account.appid, account.mchid, "0", "", r["transaction_id"], r["out_trade_no"], r["openid"],
                "NATIVE", r["state"], "OTHERS", r["currency"], to_major(r["settle"], "CNY"), "0.00",
                r.get("refund_id", "0"), r.get("out_refund_no", "0"), to_major(r["refund"], "CNY"), "0.00",
                "ORIGINAL" if r["refund"] else "", r.get("refund_status", ""), r["description"], "", r["fee"],
                "0.60%", to_major(r["order"], "CNY"), to_major(r["refund_req"], "CNY"), "",
            ))
        fees = sum((Decimal(r["fee"]) for r in rows), Decimal("0.00000"))
        writer.writerow(BILL_SUMMARY)
        writer.writerow("`" + str(v) for v in (
            len(rows), to_major(sum(r["settle"] for r in rows), "CNY"), to_major(sum(r["refund"] for r in rows), "CNY"),
            "0.00", f"{fees}", to_major(sum(r["order"] for r in rows), "CNY"),
            to_major(sum(r["refund_req"] for r in rows), "CNY"),
        ))
        return out.getvalue().encode("utf-8")

    # -- the payer page --------------------------------------------------------------------------------------

    def _page(self, status: int, trade: Trade | None, message: str) -> Response:
        parts = [f"<!doctype html><title>微信支付</title><h1>WeChat Pay (simulated)</h1><p>{html.escape(message)}</p>"]
        if trade is not None:
            parts.append(
                f"<p>Order <code>{html.escape(trade.out_trade_no)}</code>: {html.escape(trade.description)}</p>"
                f'<p class="amount">¥{to_major(trade.amount, "CNY")} {trade.currency}</p>'
                f"<p>Status: {trade.trade_state}</p>"
            )
            if trade.trade_state in ("NOTPAY", "USERPAYING"):
                parts.append(
                    '<form method="post"><button name="action" value="pay">Pay</button> '
                    '<button name="action" value="fail">Fail</button> '
                    '<button name="action" value="scan">Scan only</button></form>'
                )
        return Response.html(status, "\n".join(parts))

    def _payer_trade(self, req: Request) -> Trade | None:
        with self.lock:
            trade = self.by_pr.get(req.query.get("pr", ""))
            return self._lookup(trade.out_trade_no) if trade is not None else None

    def _pay_page(self, req: Request) -> Response:
        trade = self._payer_trade(req)
        if trade is None:
            return self._page(404, None, "No such order.")
        return self._page(200, trade, "Choose how this payment attempt ends.")

    def _pay_action(self, req: Request) -> Response:
        action = req.form().get("action")
        with self.lock:
            trade = self._payer_trade(req)
            if trade is None:
                return self._page(404, None, "No such order.")
            if action not in ("pay", "fail", "scan"):
                return self._page(400, trade, "The action must be pay, fail or scan.")
            if trade.trade_state == "CLOSED":
                return self._page(409, trade, "This order is closed and cannot be paid.")
            if trade.trade_state in PAID:
                return self._page(200, trade, "This order is already paid.")
            if action == "scan":
                trade.trade_state = "USERPAYING"
                return self._page(200, trade, "Scanned; the payer is entering the password.")
            if action == "fail":
                trade.trade_state = "NOTPAY"
                trade.failed_attempts += 1
                return self._page(200, trade, "The payment failed; the order can still be paid.")
            trade.trade_state, trade.success_time = "SUCCESS", time.time()
            trade.openid = "o" + secrets.token_urlsafe(20)
            self._notify(trade, trade.notify_url, "TRANSACTION.SUCCESS", "支付成功", self._trade_json(trade))
            return self._page(200, trade, "Paid.")


def account_from_files(
    *, mchid: str, appid: str, merchant_serial_no: str, apiv3_key: str, platform_public_key_id: str,
    merchant_public_key_path: str, platform_private_key_path: str,
) -> Account:
    return Account.from_pems(
        mchid=mchid, appid=appid, merchant_public_key=Path(merchant_public_key_path).read_text(),
        merchant_serial_no=merchant_serial_no, apiv3_key=apiv3_key,
        platform_private_key=Path(platform_private_key_path).read_text(), platform_public_key_id=platform_public_key_id,
    )


def main(argv: list[str] | None = None, env: Callable[[str], str | None] = os.environ.get) -> None:
    """Run without Django; the account comes from the WECHATPAY_* variables that generate_dev_keys writes."""
    parser = argparse.ArgumentParser(description="The WeChat Pay API v3 simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--public-base-url")
    args = parser.parse_args(argv)
    account = account_from_files(
        mchid=env("WECHATPAY_MCHID") or "", appid=env("WECHATPAY_APPID") or "",
        merchant_serial_no=env("WECHATPAY_MERCHANT_SERIAL_NO") or "", apiv3_key=env("WECHATPAY_APIV3_KEY") or "",
        platform_public_key_id=env("WECHATPAY_PLATFORM_PUBLIC_KEY_ID") or "",
        merchant_public_key_path=env("WECHATPAY_SIM_MERCHANT_PUBLIC_KEY_PATH") or "",
        platform_private_key_path=env("WECHATPAY_SIM_PLATFORM_PRIVATE_KEY_PATH") or "",
    )
    run_forever(WechatPaySimulator([account], args.host, args.port, args.public_base_url), sys.stdout)


if __name__ == "__main__":
    main()
