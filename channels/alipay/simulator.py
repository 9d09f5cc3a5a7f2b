"""Alipay's open platform gateway, simulated (SIMULATORS.md): `python manage.py run_simulator alipay`.

It speaks Alipay's published protocol (opendocs.alipay.com), so that a client written from those documents works
against it unchanged, configured with an account from `POST /_sim/accounts`:
- `GET|POST /gateway.do`, parameters in the query string, a form body or a multipart body. Requests are verified
  with the app's public key (all parameters but `sign`); answers are `{"<method>_response": {...}, "sign": ...}`
  signed over the exact JSON text of the response object with Alipay's key. An unknown app_id gets the unsigned
  `error_response`; a bad signature, timestamp or sign_type gets the isv.* sub_codes.
- alipay.trade.precreate makes a QR code (`qr_code`, this simulator's payer page). As at Alipay, the trade only
  exists once the payer scans the code (opens the page); until then query and close answer ACQ.TRADE_NOT_EXIST.
  The same out_trade_no again returns the same QR code; with another amount ACQ.CONTEXT_INCONSISTENT; once paid
  or closed ACQ.TRADE_HAS_SUCCESS / ACQ.TRADE_HAS_CLOSE. `time_expire` closes it.
- alipay.trade.query, .close (WAIT_BUYER_PAY only), .refund (per out_request_no; a repeat answers fund_change=N;
  a full refund closes the trade), .fastpay.refund.query, alipay.data.dataservice.bill.downloadurl.query (a zip
  of GBK CSVs, detail and summary, for a day in Beijing time; the URL is good for 30 seconds).
- trade_status_sync notifications: a signed form POST (`sign` and `sign_type` not signed), acknowledged only by the
  body `success`, retried after 4m, 10m, 10m, 1h, 2h, 6h, 15h with the same notify_id. Sent when a trade is paid
  and when it is refunded (out_biz_no, refund_fee, gmt_refund; TRADE_CLOSED after a full refund), as Alipay's
  notification documents list; there is no separate refund-result message.
Numbers are unique across the simulator, not per app (the payer page names no app). Imports nothing from
payments/ or Django: the simulator is the channel.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import datetime as dt
import html
import io
import json
import os
import re
import secrets
import sys
import time
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from channels.alipay import signing
from channels.money import from_major, to_major
from channels.simulator import (
    BadRequest,
    ChannelSimulator,
    Notification,
    Request,
    Response,
    added_row_time,
    rfc3339,
    run_forever,
)

DEFAULT_PORT = 8102
GATEWAY_PATH = "/gateway.do"
BILL_PATH = "/downloadBillFile.resource"
RETRY_SCHEDULE = (240.0, 600.0, 600.0, 3600.0, 7200.0, 21600.0, 54000.0)  # 4m 10m 10m 1h 2h 6h 15h
METHODS = {
    "alipay.trade.precreate": "create",
    "alipay.trade.query": "query",
    "alipay.trade.close": "close",
    "alipay.trade.refund": "refund",
    "alipay.trade.fastpay.refund.query": "refund_query",
    "alipay.data.dataservice.bill.downloadurl.query": "bill",
}
MESSAGES = {
    "10000": "Success",
    "20000": "Service Currently Unavailable",
    "40001": "Missing Required Arguments",
    "40002": "Invalid Arguments",
    "40004": "Business Failed",
    "40005": "Call Limited",
}
MAX_AMOUNT = 10_000_000_000  # 100,000,000.00 yuan, Alipay's ceiling for total_amount
BILL_URL_TTL_S = 30
OUT_TRADE_NO_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
OUT_REQUEST_NO_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
PRICE_RE = re.compile(r"\d{1,9}(\.\d{1,2})?")
BILL_COLUMNS = [
    "支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号", "门店名称", "操作员",
    "终端号", "对方账户", "订单金额（元）", "商家实收（元）", "支付宝红包（元）", "集分宝（元）", "支付宝优惠（元）",
    "商家优惠（元）", "券核销金额（元）", "券名称", "商家红包消费金额（元）", "卡消费金额（元）", "退款批次号/请求号",
    "服务费（元）", "分润（元）", "备注",
]
SUMMARY_COLUMNS = [
    "门店编号", "门店名称", "交易订单总笔数", "退款订单总笔数", "订单金额（元）", "商家实收（元）", "支付宝优惠（元）",
    "商家优惠（元）", "卡消费金额（元）", "服务费（元）", "分润（元）", "实收净额（元）",
]


@dataclass(eq=False)
class Account:
    app_id: str
    app_public_key: rsa.RSAPublicKey  # verifies the app's requests
    alipay_private_key: rsa.RSAPrivateKey  # signs our answers and notifications
    seller_id: str = field(default_factory=lambda: "2088" + "".join(secrets.choice("0123456789") for _ in range(12)))


@dataclass
class Context:
    account: Account
    method: str
    params: dict[str, str]
    charset: str


@dataclass(eq=False)
class Refund:
    out_request_no: str
    amount: int
    reason: str
    at: float


@dataclass(eq=False)
class Trade:
    app_id: str
    out_trade_no: str
    qr_code: str
    amount: int
    subject: str
    notify_url: str | None
    time_expire: float | None
    created_at: float
    trade_no: str | None = None  # set when the payer scans the code: from then on the trade exists
    status: str = "WAIT_BUYER_PAY"
    scanned_at: float | None = None
    paid_at: float | None = None
    closed_at: float | None = None
    buyer_id: str = ""
    buyer_logon_id: str = ""
    failed_attempts: int = 0
    refunds: list[Refund] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)

    @property
    def refunded(self) -> int:
        return sum(r.amount for r in self.refunds)


def _digits(n: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(n))


def _cst(t: float | None, ms: bool = False) -> str:
    if t is None:
        return ""
    when = dt.datetime.fromtimestamp(t, signing.CST)
    return when.strftime(signing.TIME_FORMAT) + (f".{when.microsecond // 1000:03d}" if ms else "")


def _day(t: float) -> str:
    return dt.datetime.fromtimestamp(t, signing.CST).date().isoformat()


def _params(req: Request) -> tuple[dict[str, str], str]:
    """All request parameters (query string and body) and the charset they are in. BadRequest on a bad charset."""
    query, body = urlsplit(req.target).query.encode("latin-1"), req.body
    charset_re = rb"(?:^|&)charset=([A-Za-z0-9_-]+)"
    found = re.search(charset_re, query) or re.search(charset_re, body)
    charset = found.group(1).decode().lower() if found else "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        raise BadRequest(charset) from None
    params = dict(parse_qsl(query.decode(charset, "replace"), keep_blank_values=True, encoding=charset))
    content_type = req.headers.get("Content-Type") or ""
    if content_type.startswith("multipart/form-data"):
        message = BytesParser(policy=policy.HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body
        )
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                params[name] = payload.decode(charset, "replace")
    elif body:
        params.update(parse_qsl(body.decode(charset, "replace"), keep_blank_values=True, encoding=charset))
    return params, charset


def _biz(ctx: Context) -> dict[str, Any]:
    try:
        # Amounts stay the exact text that was sent, whether a JSON string or a JSON number.
        biz = json.loads(ctx.params.get("biz_content") or "", parse_float=str, parse_int=str)
    except ValueError:
        biz = None
    if not isinstance(biz, dict):
        raise BadRequest("biz_content must be a JSON object")
    return biz


def _text(biz: Mapping[str, Any], name: str, pattern: re.Pattern[str] | None = None, required: bool = True) -> str:
    value = biz.get(name)
    if value in (None, "") and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > 256 or (pattern and not pattern.fullmatch(value)):
        raise BadRequest(f"{name} is missing or invalid")
    return value


def _price(biz: Mapping[str, Any], name: str) -> int:
    value = biz.get(name)
    if not isinstance(value, str) or not PRICE_RE.fullmatch(value) or from_major(value, "CNY") < 1:
        raise BadRequest(f"{name} must be yuan with at most two decimals, at least 0.01")
    return from_major(value, "CNY")


def _corrupt(signature: str) -> str:
    return ("B" if signature[0] == "A" else "A") + signature[1:]


def private_pem(key: rsa.RSAPrivateKey) -> str:
    """PKCS#1, the format Alipay's key tool writes for non-Java clients (and the one its Python SDK loads)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def public_pem(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def account_from_pems(app_id: str, app_public_key: str, alipay_private_key: str) -> Account:
    return Account(app_id, signing.load_public_key(app_public_key), signing.load_private_key(alipay_private_key))


class AlipaySimulator(ChannelSimulator):
    name = "alipay"
    retry_schedule = RETRY_SCHEDULE

    def __init__(
        self,
        accounts: Mapping[str, Account] | None = None,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        public_base_url: str | None = None,
        notify_hosts: Iterable[str] = (),
    ) -> None:
        super().__init__(host, port, public_base_url, notify_hosts)
        self.accounts: dict[str, Account] = dict(accounts or {})
        self.trades: dict[str, Trade] = {}
        self.qr_codes: dict[str, str] = {}  # QR code token → out_trade_no
        self.bill_files: dict[str, tuple[float, str, bytes]] = {}  # fileId → (expiry, file name, zip)
        # The gateway multiplexes operations by the `method` parameter; dispatch() turns it into a path segment
        # so that each operation gets the framework's authentication and faults.
        for method, operation in METHODS.items():
            for verb in ("GET", "POST"):
                self.route(verb, re.escape(f"{GATEWAY_PATH}/{method}"), getattr(self, f"_{operation}"), operation)
        for verb in ("GET", "POST"):
            self.route(verb, rf"{re.escape(GATEWAY_PATH)}/(?P<method>.*)", self._unknown_method)
        self.route("GET", r"/qr/(?P<code>[^/]+)", self._pay_page)
        self.route("POST", r"/qr/(?P<code>[^/]+)", self._pay_action)
        self.route("GET", re.escape(BILL_PATH), self._bill_file)

    def dispatch(self, req: Request) -> Response:
        if req.path == GATEWAY_PATH:
            try:
                method = _params(req)[0].get("method", "")
            except BadRequest:
                method = ""
            query = urlsplit(req.target).query
            req = Request(
                req.method, f"{GATEWAY_PATH}/{quote(method, safe='')}" + (f"?{query}" if query else ""), req.headers,
                req.body,
            )
        return super().dispatch(req)

    # -- hooks -----------------------------------------------------------------------------------------------

    def authenticate(self, req: Request) -> tuple[Any, Response | None]:
        try:
            params, charset = _params(req)
        except BadRequest:
            return None, self._unsigned("40002", "isv.invalid-charset", "字符集错误")
        app_id = params.get("app_id", "")
        account = self.accounts.get(app_id)
        if account is None:
            # The gateway cannot sign for an app it does not know: the unsigned error_response.
            sub_code = "isv.invalid-app-id" if app_id else "isv.missing-app-id"
            return None, self._unsigned("40002" if app_id else "40001", sub_code, "无效的AppID参数")
        ctx = Context(account, params.get("method", ""), params, charset)
        problem = self._security_problem(params, account, charset)
        return ctx, (self._fail(ctx, *problem) if problem else None)

    @staticmethod
    def _security_problem(params: Mapping[str, str], account: Account, charset: str) -> tuple[str, str, str] | None:
        if not params.get("sign"):
            return "40001", "isv.missing-signature", "缺少签名参数"
        if not params.get("sign_type"):
            return "40001", "isv.missing-signature-type", "缺少签名类型参数"
        if params["sign_type"] != "RSA2":
            return "40002", "isv.invalid-signature-type", "无效签名类型"
        if not params.get("timestamp"):
            return "40001", "isv.missing-timestamp", "缺少时间戳参数"
        try:
            # Only the format is checked: widely used clients send the server's local time, not Beijing time.
            dt.datetime.strptime(params["timestamp"], signing.TIME_FORMAT)
        except ValueError:
            return "40002", "isv.invalid-timestamp", "非法的时间戳参数"
        if not signing.verify(account.app_public_key, signing.canonical(params), params["sign"], charset):
            return "40002", "isv.invalid-signature", "无效签名"
        return None

    def before_operation(self, operation: str, req: Request, ctx: Any) -> None:
        if operation == "create":
            try:
                out_trade_no = _biz(ctx).get("out_trade_no")
            except BadRequest:
                return
            if isinstance(out_trade_no, str):
                self.count_create(out_trade_no)

    def fault_response(self, mode: str, operation: str, ctx: Any) -> Response:
        if mode == "http_500":
            # What a failing gateway or the proxy in front of it sends: no Alipay body at all.
            return Response(500, b"<html><body><h1>500 Internal Server Error</h1></body></html>",
                            {"Content-Type": "text/html"})
        if mode == "rate_limit":
            return self._fail(ctx, "40005", "isv.app-call-limited", "应用调用次数超限，包含调用频率超限")
        return self._fail(ctx, "40004", "ACQ.ACCESS_FORBIDDEN", "无权限使用接口")

    def acknowledged(self, response: httpx.Response) -> bool:
        # Alipay's rule: only the seven characters "success" stop the retries.
        return response.status_code == 200 and response.content.strip() == b"success"

    def trade_snapshot(self, out_trade_no: str) -> dict[str, Any] | None:
        trade = self._lookup(out_trade_no)
        if trade is None:
            return None
        return {
            "out_trade_no": trade.out_trade_no,
            "trade_no": trade.trade_no,
            "status": trade.status,
            "scanned": trade.trade_no is not None,
            "amount": trade.amount,
            "currency": "CNY",
            "create_calls": self.create_calls.get(out_trade_no, 0),
            "paid_at": rfc3339(trade.paid_at) if trade.paid_at is not None else None,
            "refunds": [
                {"out_refund_no": r.out_request_no, "amount": r.amount, "status": "REFUND_SUCCESS"}
                for r in trade.refunds
            ],
            "notifications": self.notification_attempts(trade.notifications),
        }

    def open_account(self, body: Any) -> dict[str, Any]:
        app_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        alipay_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        app_id = "2021" + _digits(12)
        self.accounts[app_id] = Account(app_id, app_key.public_key(), alipay_key)
        return {
            "app_id": app_id,
            "app_private_key": private_pem(app_key),
            "app_public_key": public_pem(app_key.public_key()),
            "alipay_public_key": public_pem(alipay_key.public_key()),
        }

    def reset_state(self) -> None:
        self.trades.clear()
        self.qr_codes.clear()
        self.bill_files.clear()

    # -- answers ---------------------------------------------------------------------------------------------

    def _answer(self, ctx: Context, payload: Mapping[str, Any]) -> Response:
        body = signing.response_body(ctx.method, payload, ctx.account.alipay_private_key, ctx.charset)
        return Response(200, body, {"Content-Type": f"application/json;charset={ctx.charset}"})

    def _ok(self, ctx: Context, **fields: Any) -> Response:
        return self._answer(ctx, {"code": "10000", "msg": "Success", **fields})

    def _fail(self, ctx: Context, code: str, sub_code: str, sub_msg: str, **fields: Any) -> Response:
        return self._answer(
            ctx, {"code": code, "msg": MESSAGES[code], "sub_code": sub_code, "sub_msg": sub_msg, **fields}
        )

    @staticmethod
    def _unsigned(code: str, sub_code: str, sub_msg: str) -> Response:
        payload = {"code": code, "msg": MESSAGES[code], "sub_code": sub_code, "sub_msg": sub_msg}
        headers = {"Content-Type": "application/json;charset=utf-8"}
        return Response(200, signing.response_body("", payload, None), headers)

    def _not_exist(self, ctx: Context, **fields: Any) -> Response:
        return self._fail(ctx, "40004", "ACQ.TRADE_NOT_EXIST", "交易不存在", **fields)

    def _invalid(self, ctx: Context, exc: Exception) -> Response:
        return self._fail(ctx, "40004", "ACQ.INVALID_PARAMETER", f"参数无效: {exc}")

    def _qr_url(self, trade: Trade) -> str:
        return f"{self.public_base_url}/qr/{trade.qr_code}"

    # -- ledger ----------------------------------------------------------------------------------------------

    def _lookup(self, out_trade_no: str) -> Trade | None:
        with self.lock:
            trade = self.trades.get(out_trade_no)
            # time_expire is applied lazily, whenever the trade is looked at.
            expired = trade is not None and trade.time_expire is not None and time.time() >= trade.time_expire
            if trade is not None and trade.status == "WAIT_BUYER_PAY" and expired:
                trade.status, trade.closed_at = "TRADE_CLOSED", trade.time_expire
            return trade

    def _existing(self, ctx: Context, biz: Mapping[str, Any]) -> Trade | None:
        """The app's trade named by out_trade_no or trade_no, if it exists at Alipay (its code was scanned)."""
        out_trade_no = biz.get("out_trade_no")
        if not isinstance(out_trade_no, str):
            trade_no = biz.get("trade_no")
            out_trade_no = next(
                (t.out_trade_no for t in self.trades.values() if t.trade_no and t.trade_no == trade_no), ""
            )
        trade = self._lookup(out_trade_no)
        if trade is None or trade.app_id != ctx.account.app_id or trade.trade_no is None:
            return None
        return trade

    def _scan(self, trade: Trade) -> None:
        if trade.trade_no is None and trade.status == "WAIT_BUYER_PAY":
            now = time.time()
            trade.trade_no = dt.datetime.fromtimestamp(now, signing.CST).strftime("%Y%m%d") + "22001" + _digits(15)
            trade.scanned_at = now
            trade.buyer_id = "2088" + _digits(12)
            trade.buyer_logon_id = f"1{_digits(2)}****{_digits(4)}"

    def _trade_fields(self, trade: Trade) -> dict[str, str]:
        total = to_major(trade.amount, "CNY")
        return {
            "trade_no": trade.trade_no or "",
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": trade.buyer_logon_id,
            "trade_status": trade.status,
            "total_amount": total,
            "receipt_amount": total if trade.paid_at else "0.00",
            "buyer_pay_amount": total if trade.paid_at else "0.00",
            "point_amount": "0.00",
            "invoice_amount": total if trade.paid_at else "0.00",
        }

    def _notify(self, trade: Trade, kind: str, extra: Mapping[str, str]) -> None:
        if not trade.notify_url:
            return
        account = self.accounts[trade.app_id]
        fields = {
            "notify_type": "trade_status_sync",
            "notify_id": secrets.token_hex(17),
            "app_id": trade.app_id,
            "charset": "utf-8",
            "version": "1.0",
            **self._trade_fields(trade),
            "buyer_id": trade.buyer_id,
            "seller_id": account.seller_id,
            "subject": trade.subject,
            "gmt_create": _cst(trade.scanned_at),
            "gmt_payment": _cst(trade.paid_at),
            "fund_bill_list": json.dumps([{"amount": to_major(trade.amount, "CNY"), "fundChannel": "ALIPAYACCOUNT"}]),
            **extra,
        }
        fields = {k: v for k, v in fields.items() if v}

        def render(tamper_amount: bool, bad_signature: bool) -> tuple[bytes, dict[str, str]]:
            params = {**fields, "notify_time": _cst(time.time()), "sign_type": "RSA2"}
            if tamper_amount:
                params["total_amount"] = to_major(from_major(params["total_amount"], "CNY") + 1, "CNY")
            signature = signing.sign(
                account.alipay_private_key, signing.canonical(params, exclude=signing.NOTIFICATION_UNSIGNED)
            )
            params["sign"] = _corrupt(signature) if bad_signature else signature
            return urlencode(params).encode(), {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}

        notification = Notification(fields["notify_id"], kind, trade.notify_url, render, key=trade.out_trade_no)
        trade.notifications.append(notification)
        self.notify(notification)

    # -- operations ------------------------------------------------------------------------------------------

    def _unknown_method(self, req: Request, method: str) -> Response:
        if not method:
            return self._unsigned("40001", "isv.missing-method", "缺少方法名参数")
        return self._unsigned("40002", "isv.invalid-method", "不存在的方法名")

    def _create(self, req: Request, ctx: Context) -> Response:
        try:
            biz = _biz(ctx)
            out_trade_no = _text(biz, "out_trade_no", OUT_TRADE_NO_RE)
            subject = _text(biz, "subject")
            amount = _price(biz, "total_amount")
            expires = signing.parse_time(_text(biz, "time_expire", required=False))
        except ValueError as exc:
            return self._invalid(ctx, exc)
        if amount > MAX_AMOUNT:
            return self._fail(ctx, "40004", "ACQ.TOTAL_FEE_EXCEED", "订单金额超过限额")
        with self.lock:
            trade = self._lookup(out_trade_no)
            if trade is None:
                trade = Trade(
                    ctx.account.app_id, out_trade_no, "bax" + secrets.token_hex(12), amount, subject,
                    ctx.params.get("notify_url") or None, expires.timestamp() if expires else None, time.time(),
                )
                self.trades[out_trade_no] = trade
                self.qr_codes[trade.qr_code] = out_trade_no
            elif trade.app_id != ctx.account.app_id or trade.amount != amount:
                return self._fail(ctx, "40004", "ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            elif trade.status in ("TRADE_SUCCESS", "TRADE_FINISHED"):
                return self._fail(ctx, "40004", "ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
            elif trade.status == "TRADE_CLOSED":
                return self._fail(ctx, "40004", "ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
            return self._ok(ctx, out_trade_no=out_trade_no, qr_code=self._qr_url(trade))

    def _query(self, req: Request, ctx: Context) -> Response:
        try:
            biz = _biz(ctx)
        except BadRequest as exc:
            return self._invalid(ctx, exc)
        with self.lock:
            trade = self._existing(ctx, biz)
            if trade is None:
                return self._not_exist(ctx)
            fields = {**self._trade_fields(trade), "buyer_user_id": trade.buyer_id}
            if trade.paid_at is not None:
                fields["send_pay_date"] = _cst(trade.paid_at)
            return self._ok(ctx, **fields)

    def _close(self, req: Request, ctx: Context) -> Response:
        try:
            biz = _biz(ctx)
        except BadRequest as exc:
            return self._invalid(ctx, exc)
        with self.lock:
            trade = self._existing(ctx, biz)
            if trade is None:
                return self._not_exist(ctx)
            if trade.status != "WAIT_BUYER_PAY":
                return self._fail(ctx, "40004", "ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
            trade.status, trade.closed_at = "TRADE_CLOSED", time.time()
            return self._ok(ctx, trade_no=trade.trade_no, out_trade_no=trade.out_trade_no)

    def _refund(self, req: Request, ctx: Context) -> Response:
        try:
            biz = _biz(ctx)
            amount = _price(biz, "refund_amount")
            out_request_no = _text(biz, "out_request_no", OUT_REQUEST_NO_RE, required=False)
            reason = _text(biz, "refund_reason", required=False)
        except ValueError as exc:
            return self._invalid(ctx, exc)
        with self.lock:
            trade = self._existing(ctx, biz)
            if trade is None:
                return self._not_exist(ctx, refund_fee="0.00", send_back_fee="0.00")
            # Without out_request_no the refund is of the whole trade, numbered by its out_trade_no.
            number = out_request_no or trade.out_trade_no
            answer = {
                "trade_no": trade.trade_no,
                "out_trade_no": trade.out_trade_no,
                "buyer_logon_id": trade.buyer_logon_id,
            }
            done = next((r for r in trade.refunds if r.out_request_no == number), None)
            if done is not None:
                if done.amount != amount:
                    return self._fail(ctx, "40004", "ACQ.DISCORDANT_REPEAT_REQUEST", "不一致的请求")
                # Refunded once already: no money moves this time.
                return self._ok(ctx, **answer, fund_change="N", refund_fee=to_major(trade.refunded, "CNY"),
                                send_back_fee="0.00", gmt_refund_pay=_cst(done.at))
            zero = {"refund_fee": "0.00", "send_back_fee": "0.00"}
            if trade.status == "TRADE_CLOSED":
                return self._fail(ctx, "40004", "ACQ.TRADE_HAS_CLOSE", "交易已经关闭", **zero)
            if trade.status != "TRADE_SUCCESS":
                return self._fail(ctx, "40004", "ACQ.TRADE_STATUS_ERROR", "交易状态不合法", **zero)
            if not out_request_no and amount != trade.amount:
                return self._fail(ctx, "40004", "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额与订单金额不一致", **zero)
            if trade.refunded + amount > trade.amount:
                return self._fail(ctx, "40004", "ACQ.REASON_TRADE_REFUND_FEE_ERR", "退款金额无效", **zero)
            refund = Refund(number, amount, reason, time.time())
            trade.refunds.append(refund)
            extra = {
                "out_biz_no": number,
                "refund_fee": to_major(trade.refunded, "CNY"),
                "gmt_refund": _cst(refund.at, ms=True),
            }
            if trade.refunded == trade.amount:
                trade.status, trade.closed_at = "TRADE_CLOSED", refund.at  # Alipay closes a fully refunded trade
                extra["gmt_close"] = _cst(refund.at)
            self._notify(trade, "refund", extra)
            return self._ok(ctx, **answer, fund_change="Y", refund_fee=to_major(trade.refunded, "CNY"),
                            send_back_fee=to_major(amount, "CNY"), gmt_refund_pay=_cst(refund.at))

    def _refund_query(self, req: Request, ctx: Context) -> Response:
        try:
            biz = _biz(ctx)
            out_request_no = _text(biz, "out_request_no")
        except ValueError as exc:
            return self._invalid(ctx, exc)
        with self.lock:
            trade = self._existing(ctx, biz)
            if trade is None:
                return self._not_exist(ctx)
            refund = next((r for r in trade.refunds if r.out_request_no == out_request_no), None)
            if refund is None:
                # Alipay's answer for a refund it has not received (or that failed): success, without refund_status.
                return self._ok(ctx, trade_no=trade.trade_no, out_trade_no=trade.out_trade_no)
            fields = {
                "trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no, "out_request_no": out_request_no,
                "total_amount": to_major(trade.amount, "CNY"), "refund_amount": to_major(refund.amount, "CNY"),
                "refund_status": "REFUND_SUCCESS",
            }
            options = biz.get("query_options")
            if isinstance(options, list) and "gmt_refund_pay" in options:
                fields["gmt_refund_pay"] = _cst(refund.at)
            return self._ok(ctx, **fields)

    def _bill(self, req: Request, ctx: Context) -> Response:
        try:
            biz = _biz(ctx)
            if biz.get("bill_type") != "trade":
                raise BadRequest("bill_type must be trade")
            day = dt.date.fromisoformat(_text(biz, "bill_date", re.compile(r"\d{4}-\d{2}-\d{2}")))
        except ValueError as exc:
            return self._invalid(ctx, exc)
        # Unlike Alipay, today's bill (so far) is served too, so that tests need not wait for tomorrow.
        if day > dt.datetime.now(signing.CST).date():
            return self._fail(ctx, "40004", "isp.bill_not_exist", "账单不存在")
        content = self._bill_zip(ctx.account, day)
        file_id = secrets.token_hex(16)
        name = f"{ctx.account.seller_id}0156_{day:%Y%m%d}.csv.zip"
        with self.lock:
            now = time.time()
            self.bill_files = {k: v for k, v in self.bill_files.items() if v[0] > now}
            self.bill_files[file_id] = (now + BILL_URL_TTL_S, name, content)
        query = urlencode({
            "bizType": "trade", "userId": ctx.account.seller_id, "fileType": "csv.zip", "bizDates": f"{day:%Y%m%d}",
            "downloadFileName": name, "fileId": file_id,
        })
        return self._ok(ctx, bill_download_url=f"{self.public_base_url}{BILL_PATH}?{query}")

    def _bill_file(self, req: Request) -> Response:
        with self.lock:
            found = self.bill_files.get(req.query.get("fileId", ""))
        if found is None or found[0] < time.time():
            return Response.html(404, "<h1>文件不存在或链接已失效</h1>")
        _, name, content = found
        return Response(200, content, {"Content-Type": "application/zip",
                                       "Content-Disposition": f"attachment; filename={name}"})

    # -- the bill --------------------------------------------------------------------------------------------

    def _bill_rows(self, account: Account, day: dt.date) -> list[list[str]]:
        rows: list[tuple[float, list[str]]] = []

        def row(trade_no: str, out_trade_no: str, kind: str, subject: str, created: str, done: float, amount: int,
                request_no: str = "", remark: str = "") -> None:
            money = to_major(amount, "CNY")
            # The service fee (0.6%, to the fen, half up): charged on a payment (printed negative), given back
            # in proportion on a refund.
            fee = ((abs(amount) * 6 + 500) // 1000) * (-1 if amount > 0 else 1)
            rows.append((done, [trade_no, out_trade_no, kind, subject, created, _cst(done), "", "", "", "",
                                "", money, money, "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00",
                                request_no, to_major(fee, "CNY"), "0.00", remark]))

        with self.lock:
            adjustment = self.bill_adjustments.get(day.isoformat())
            for trade in self.trades.values():
                if trade.app_id != account.app_id or trade.trade_no is None:
                    continue
                dropped = adjustment is not None and trade.out_trade_no in adjustment.drop
                if trade.paid_at is not None and _day(trade.paid_at) == day.isoformat() and not dropped:
                    amount = adjustment.amount.get(trade.out_trade_no, trade.amount) if adjustment else trade.amount
                    row(trade.trade_no, trade.out_trade_no, "交易", trade.subject, _cst(trade.scanned_at),
                        trade.paid_at, amount)
                for refund in trade.refunds:
                    if _day(refund.at) == day.isoformat():
                        row(trade.trade_no, trade.out_trade_no, "退款", trade.subject, _cst(trade.scanned_at),
                            refund.at, -refund.amount, refund.out_request_no)
            for extra in adjustment.add if adjustment else []:
                at = added_row_time(extra, day.isoformat(), signing.CST)
                row(f"{day:%Y%m%d}22001" + _digits(15), extra["out_trade_no"], "交易", "", _cst(at), at,
                    extra["amount"], remark=str(extra.get("status", "")))
        return [cells for _, cells in sorted(rows, key=lambda r: r[0])]

    def _bill_zip(self, account: Account, day: dt.date) -> bytes:
        rows = self._bill_rows(account, day)
        payments = [r for r in rows if r[2] == "交易"]
        refunds = [r for r in rows if r[2] == "退款"]
        total = sum(from_major(r[12], "CNY") for r in payments)
        refunded = sum(from_major(r[12], "CNY") for r in refunds)
        start, end = f"{day:%Y年%m月%d日} 00:00:00", f"{day + dt.timedelta(days=1):%Y年%m月%d日} 00:00:00"
        exported = dt.datetime.now(signing.CST).strftime("%Y年%m月%d日 %H:%M:%S")
        head = [f"#账号：[{account.seller_id}0156]", f"#起始日期：[{start}]   终止日期：[{end}]"]

        def csv_text(title: str, list_name: str, columns: list[str], body: list[list[str]], footer: list[str]) -> bytes:
            out = io.StringIO()
            out.write("\r\n".join([title, *head, f"#{'-' * 41}{list_name}列表{'-' * 40}"]) + "\r\n")
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(columns)
            # Alipay ends every value with a tab, so that spreadsheets keep long numbers as text.
            writer.writerows([[f"{cell}\t" for cell in cells] for cells in body])
            closing = f"#{'-' * 41}{list_name}列表结束{'-' * 36}"
            out.write("\r\n".join([closing, *footer, f"#导出时间：[{exported}]"]) + "\r\n")
            return out.getvalue().encode("gbk")

        detail = csv_text(
            "#支付宝业务明细查询", "业务明细", BILL_COLUMNS, rows,
            [f"#交易合计：{len(payments)}笔，商家实收共{to_major(total, 'CNY')}元，商家优惠共0.00元",
             f"#退款合计：{len(refunds)}笔，商家实收退款共{to_major(refunded, 'CNY')}元，商家优惠退款共0.00元"],
        )
        net = to_major(total + refunded, "CNY")
        sums = [str(len(payments)), str(len(refunds)), net, net, "0.00", "0.00", "0.00", "0.00", "0.00", net]
        summary = csv_text(
            "#支付宝业务汇总查询", "业务汇总", SUMMARY_COLUMNS, [["", "", *sums], ["合计", "", *sums]], []
        )
        prefix = f"{account.seller_id}0156_{day:%Y%m%d}"
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{prefix}_业务明细.csv", detail)
            archive.writestr(f"{prefix}_业务明细(汇总).csv", summary)
        return out.getvalue()

    # -- the payer -------------------------------------------------------------------------------------------

    def _page(self, status: int, trade: Trade | None, message: str) -> Response:
        parts = [f"<!doctype html><title>支付宝 · 扫码支付</title><h1>支付宝</h1><p>{html.escape(message)}</p>"]
        if trade is not None:
            parts.append(
                f"<p>Order <code>{html.escape(trade.out_trade_no)}</code>: {html.escape(trade.subject)}</p>"
                f'<p class="amount">¥{to_major(trade.amount, "CNY")}</p><p>Status: {trade.status}</p>'
            )
            if trade.status == "WAIT_BUYER_PAY":
                parts.append(
                    '<form method="post"><button name="action" value="pay">Pay</button> '
                    '<button name="action" value="fail">Fail</button></form>'
                )
        return Response.html(status, "\n".join(parts))

    def _pay_page(self, req: Request, code: str) -> Response:
        with self.lock:
            trade = self._lookup(self.qr_codes.get(code, ""))
            if trade is None:
                return self._page(404, None, "No such QR code.")
            self._scan(trade)  # opening the page is scanning the code: the trade now exists at Alipay
            return self._page(200, trade, "Choose how this payment attempt ends.")

    def _pay_action(self, req: Request, code: str) -> Response:
        action = req.form().get("action")
        with self.lock:
            trade = self._lookup(self.qr_codes.get(code, ""))
            if trade is None:
                return self._page(404, None, "No such QR code.")
            if action not in ("pay", "fail"):
                return self._page(400, trade, "The action must be pay or fail.")
            if trade.status == "TRADE_CLOSED":
                return self._page(409, trade, "This order is closed and cannot be paid.")
            if trade.status != "WAIT_BUYER_PAY":
                return self._page(200, trade, "This order is already paid.")
            self._scan(trade)
            if action == "fail":
                trade.failed_attempts += 1
                return self._page(200, trade, "The payment failed; the order can still be paid.")
            trade.status, trade.paid_at = "TRADE_SUCCESS", time.time()
            self._notify(trade, "payment", {})
            return self._page(200, trade, "Paid.")


def main(argv: list[str] | None = None) -> None:
    """Run without Django: the account comes from ALIPAY_APP_ID, ALIPAY_SIM_APP_PUBLIC_KEY_PATH and
    ALIPAY_SIM_PRIVATE_KEY_PATH when they are set (otherwise open one with POST /_sim/accounts)."""
    parser = argparse.ArgumentParser(description="The Alipay channel simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--public-base-url")
    args = parser.parse_args(argv)
    app_id = os.environ.get("ALIPAY_APP_ID", "")
    app_public = os.environ.get("ALIPAY_SIM_APP_PUBLIC_KEY_PATH", "")
    alipay_private = os.environ.get("ALIPAY_SIM_PRIVATE_KEY_PATH", "")
    accounts = {}
    if app_id and app_public and alipay_private:
        accounts[app_id] = account_from_pems(app_id, Path(app_public).read_text(), Path(alipay_private).read_text())
    run_forever(AlipaySimulator(accounts, args.host, args.port, args.public_base_url), sys.stdout)


if __name__ == "__main__":
    main()
