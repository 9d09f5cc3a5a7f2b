"""The WeChat Pay API v3 channel adapter: Native payments for a direct merchant, platform public key mode.

Protocol (pay.weixin.qq.com/doc/v3/merchant): Native 下单 `POST /v3/pay/transactions/native`, 商户订单号查询订单,
关闭订单, 退款申请 `POST /v3/refund/domestic/refunds`, 查询单笔退款, 申请交易账单 `GET /v3/bill/tradebill` and its
download, 签名 and 回调通知 (signing.py). Amounts are integer fen in JSON; only the bill file has yuan strings.
A refund's result arrives by notification (REFUND.SUCCESS), so ``refund()`` usually answers ``PROCESSING``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any, TypeVar
from urllib.parse import quote

import httpx

from channels.base import (
    CHINA_TIME,
    BillFile,
    BillNotReady,
    BillRow,
    Channel,
    ChannelError,
    InvalidNotification,
    Notification,
    NotificationReply,
    RefundResult,
    RefundStatus,
    Refused,
    Retryable,
    TradeResult,
    TradeStatus,
    UnknownOutcome,
    file_digest,
)
from channels.http import Download, Timeouts, download, new_client, send
from channels.money import fee_from_major, from_major
from channels.wechatpay import signing

SHANGHAI = CHINA_TIME  # the channel's times and bill days
NATIVE = "/v3/pay/transactions/native"
REFUNDS = "/v3/refund/domestic/refunds"

# WeChat Pay's error codes → (our outcome kind, our failure code). The only place that reads them.
ERROR_CODES: dict[str, tuple[type[ChannelError], str]] = {
    "USER_PAYING": (Retryable, "payer_paying"),  # 202: the payer is entering the password; ask again later
    "PARAM_ERROR": (Refused, "invalid_request"),
    "INVALID_REQUEST": (Refused, "invalid_request"),  # also: refund of an unpaid trade, refunds over the total
    "ORDER_CLOSED": (Refused, "trade_closed"),
    # Our own signature was refused: a configuration problem, not the payer's. Retrying keeps the order
    # visible as stuck instead of failing every merchant's orders.
    "SIGN_ERROR": (Retryable, "channel_auth_failed"),
    "APPID_MCHID_NOT_MATCH": (Retryable, "channel_auth_failed"),
    "NOT_ENOUGH": (Refused, "insufficient_balance"),
    "OUT_TRADE_NO_USED": (Refused, "duplicate_out_trade_no"),
    "TRADE_ERROR": (Refused, "channel_refused"),
    "ORDER_NOT_EXIST": (Refused, "trade_not_found"),
    "RESOURCE_NOT_EXISTS": (Refused, "not_found"),  # refunds: no such trade or refund
    "FREQUENCY_LIMITED": (Retryable, "channel_rate_limited"),
    "SYSTEM_ERROR": (Retryable, "channel_system_error"),
    "STATEMENT_CREATING": (BillNotReady, "bill_creating"),  # the bill is being generated
    # No bill (yet): before about 10:00 the next day, or a day without trades (which never gets one).
    "NO_STATEMENT_EXIST": (BillNotReady, "bill_not_found"),
}

TRADE_STATES = {
    "SUCCESS": TradeStatus.SUCCEEDED,
    "REFUND": TradeStatus.SUCCEEDED,  # paid, then (partly) refunded: still paid
    "NOTPAY": TradeStatus.WAITING,
    "USERPAYING": TradeStatus.WAITING,
    "ACCEPT": TradeStatus.WAITING,
    "PAYERROR": TradeStatus.WAITING,  # that attempt failed; the payer may try again until the trade closes
    "CLOSED": TradeStatus.CLOSED,
    "REVOKED": TradeStatus.CLOSED,
}
# Refund status → (ours, failure code).
REFUND_STATES: dict[str, tuple[RefundStatus, str | None]] = {
    "SUCCESS": (RefundStatus.SUCCEEDED, None),
    "PROCESSING": (RefundStatus.PROCESSING, None),
    # Not final: the original account refused the money (e.g. a cancelled card) and the merchant must re-route
    # it. Failing the refund here would free its amount for a second refund of money that may still go out.
    "ABNORMAL": (RefundStatus.PROCESSING, "refund_abnormal"),
    "CLOSED": (RefundStatus.FAILED, "refund_closed"),
}
EVENTS = frozenset({"TRANSACTION.SUCCESS", "REFUND.SUCCESS", "REFUND.ABNORMAL", "REFUND.CLOSED"})
BILL_SUMMARY_FIRST = "总交易单数"  # first column of the summary header that ends the detail rows

T = TypeVar("T")


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["code"])
    except (ValueError, KeyError, TypeError):
        return ""


def _error(status: int, code: str, *, verified: bool = True) -> ChannelError:
    kind, our_code = ERROR_CODES.get(code, (None, ""))
    if not verified and kind is not Retryable:
        kind = None  # an unsigned answer may only ever make us try again, never refuse
    if kind is None:
        if status == 429:
            kind, our_code = Retryable, "channel_rate_limited"
        elif status >= 500 or not verified:
            kind, our_code = Retryable, "channel_auth_failed" if status == 401 else "channel_system_error"
        else:
            kind, our_code = UnknownOutcome, "channel_error"
    return kind(f"wechatpay answered {status} {code or 'without a code'}", code=our_code)


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _trade(data: Mapping[str, Any]) -> TradeResult:
    amount = data["amount"]
    return TradeResult(
        out_trade_no=data["out_trade_no"],
        status=TRADE_STATES[data["trade_state"]],
        amount=int(amount["total"]),
        currency=amount.get("currency"),
        channel_trade_no=data.get("transaction_id") or None,
        paid_at=_time(data.get("success_time")),
    )


def _refund(data: Mapping[str, Any], state: str) -> RefundResult:
    status, failure_code = REFUND_STATES[state]
    return RefundResult(
        out_refund_no=data["out_refund_no"],
        status=status,
        amount=int(data["amount"]["refund"]),
        currency=data["amount"].get("currency"),  # refund notifications carry none
        channel_refund_no=data.get("refund_id") or None,
        succeeded_at=_time(data.get("success_time")),
        failure_code=failure_code,
    )


def _bill_rows(file: IO[bytes]) -> Iterator[BillRow]:
    """The detail rows of a trade bill, read one at a time: a header, rows whose fields start with a backtick,
    then a summary."""
    text = io.TextIOWrapper(file, encoding="utf-8-sig", newline="")
    try:
        reader = csv.reader(text)
        header = next(reader, [])
        for fields in reader:
            if not fields:
                continue
            if fields[0] == BILL_SUMMARY_FIRST:
                break
            values = dict(zip(header, (f.removeprefix("`") for f in fields), strict=False))
            currency, refund = values["货币种类"], values["交易状态"] == "REFUND"
            yield BillRow(
                kind="refund" if refund else "payment",
                out_trade_no=values["商户订单号"],
                amount=from_major(values["申请退款金额" if refund else "订单金额"], currency),
                currency=currency,
                status=(REFUND_STATES[values["退款状态"]][0] if refund else TRADE_STATES[values["交易状态"]]).value,
                channel_trade_no=values["微信订单号"] or None,
                out_refund_no=values["商户退款单号"] if refund else None,
                channel_refund_no=values["微信退款单号"] if refund else None,
                completed_at=dt.datetime.strptime(values["交易时间"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=SHANGHAI),
                # Charged on a payment, given back (negative) on a refund; printed to 1/1000 fen.
                fee=fee_from_major(values.get("手续费", ""), currency),
            )
    finally:
        text.detach()  # the BillFile owns the file


class WechatPayChannel(Channel):
    name = "wechatpay"
    currencies = frozenset({"CNY"})
    bill_timezone = "Asia/Shanghai"

    def __init__(
        self,
        *,
        api_base: str,
        mchid: str,
        appid: str,
        merchant_private_key: str,
        merchant_serial_no: str,
        apiv3_key: str,
        platform_public_key: str,
        platform_public_key_id: str,
        notify_url: str,
        timeouts: Timeouts,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.mchid, self.appid = mchid, appid
        self.account = mchid
        self.merchant_key = signing.load_private_key(merchant_private_key)
        self.merchant_serial_no = merchant_serial_no
        self.apiv3_key = apiv3_key
        self.platform_key = signing.load_public_key(platform_public_key)
        self.platform_key_id = platform_public_key_id
        self.notify_url = notify_url  # where refund results are notified; create_trade is told its own
        self.client = new_client(timeouts)

    # -- transport -------------------------------------------------------------------------------------

    def _signed(self, method: str, url: str, payload: Mapping[str, Any] | None = None) -> httpx.Request:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() if payload is not None else b""
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        request = self.client.build_request(method, url if "://" in url else self.api_base + url, content=body,
                                            headers=headers)
        # The signature covers the path and query exactly as they go on the wire.
        request.headers["Authorization"] = signing.authorization(
            mchid=self.mchid, serial_no=self.merchant_serial_no, key=self.merchant_key, method=method,
            url=request.url.raw_path.decode(), body=body,
        )
        return request

    def _send(self, method: str, url: str, payload: Mapping[str, Any] | None = None) -> httpx.Response:
        return send(self.client, self._signed(method, url, payload))

    def _download(self, url: str) -> Download:
        return download(self.client, self._signed("GET", url))

    def _json(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None, *, allow: frozenset[str] = frozenset()
    ) -> tuple[str, Any]:
        """(error code or "", verified JSON answer) of a call; error codes outside ``allow`` are raised."""
        response = self._send(method, path, payload)
        status = response.status_code
        if status in (401, 429) or status >= 500:
            # Not signed when our own signature failed, and carrying no business outcome otherwise: these
            # only ever mean "try again", so they are not verified and cannot refuse anything.
            raise _error(status, _error_code(response.content), verified=False)
        problem = signing.check_signed(self.platform_key, self.platform_key_id, response.headers, response.content)
        if problem:
            raise UnknownOutcome(f"channel answer failed verification ({problem})", code="bad_channel_signature")
        if status not in (200, 204):
            code = _error_code(response.content)
            if code in allow:
                return code, {}
            raise _error(status, code)
        try:
            return "", response.json() if response.content else {}
        except ValueError:
            raise UnknownOutcome("channel answer is not JSON", code="bad_channel_answer") from None

    @staticmethod
    def _parse(parser: Callable[..., T], *args: Any) -> T:
        try:
            return parser(*args)
        except (KeyError, TypeError, ValueError) as exc:
            raise UnknownOutcome(f"channel answer is malformed ({exc!r})", code="bad_channel_answer") from exc

    # -- operations ------------------------------------------------------------------------------------

    def create_trade(
        self,
        *,
        out_trade_no: str,
        amount: int,
        currency: str,
        description: str,
        notify_url: str,
        expires_at: dt.datetime,
    ) -> TradeResult:
        if currency not in self.currencies:
            raise Refused(f"wechatpay does not take {currency}", code="currency_not_supported")
        payload = {
            "appid": self.appid,
            "mchid": self.mchid,
            "description": description[:127] or out_trade_no,
            "out_trade_no": out_trade_no,
            "time_expire": expires_at.astimezone(SHANGHAI).isoformat(timespec="seconds"),
            "notify_url": notify_url,
            "amount": {"total": amount, "currency": currency},
        }
        # Only this answer carries the code_url; after an unanswered create, the core queries and then sends
        # the identical create again, which the channel answers with the same code_url (never a second trade).
        data = self._json("POST", NATIVE, payload)[1]
        code_url = self._parse(lambda d: str(d["code_url"]), data)
        return TradeResult(out_trade_no, TradeStatus.WAITING, amount=amount, currency=currency, pay_url=code_url)

    def query_trade(self, *, out_trade_no: str) -> TradeResult:
        path = f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}?mchid={quote(self.mchid)}"
        code, data = self._json("GET", path, allow=frozenset({"ORDER_NOT_EXIST"}))
        return TradeResult(out_trade_no, TradeStatus.NOT_FOUND) if code else self._parse(_trade, data)

    def close_trade(self, *, out_trade_no: str) -> TradeResult:
        code, _ = self._json(
            "POST", f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}/close", {"mchid": self.mchid},
            allow=frozenset({"ORDER_NOT_EXIST", "ORDER_CLOSED", "TRADE_ERROR"}),
        )
        if code == "ORDER_NOT_EXIST":
            return TradeResult(out_trade_no, TradeStatus.NOT_FOUND)
        # The close answers 204 without a body, or an error for a trade already closed or paid: only the
        # query tells how the trade now stands (a paid one must come back SUCCEEDED).
        return self.query_trade(out_trade_no=out_trade_no)

    def refund(
        self, *, out_trade_no: str, out_refund_no: str, amount: int, total_amount: int, currency: str, reason: str
    ) -> RefundResult:
        payload: dict[str, Any] = {
            "out_trade_no": out_trade_no,
            "out_refund_no": out_refund_no,
            "amount": {"refund": amount, "total": total_amount, "currency": currency},
        }
        if reason:
            payload["reason"] = reason[:80]
        if self.notify_url:
            payload["notify_url"] = self.notify_url
        data = self._json("POST", REFUNDS, payload)[1]
        return self._parse(lambda d: _refund(d, d["status"]), data)

    def query_refund(self, *, out_trade_no: str, out_refund_no: str) -> RefundResult:
        code, data = self._json("GET", f"{REFUNDS}/{quote(out_refund_no, safe='')}",
                                allow=frozenset({"RESOURCE_NOT_EXISTS"}))
        if code:
            return RefundResult(out_refund_no, RefundStatus.NOT_FOUND)
        return self._parse(lambda d: _refund(d, d["status"]), data)

    def download_bill(self, *, day: dt.date) -> BillFile:
        """The day's trade bill (``day`` in Asia/Shanghai); ``BillNotReady`` until WeChat Pay has made it."""
        data = self._json("GET", f"/v3/bill/tradebill?bill_date={day.isoformat()}&bill_type=ALL")[1]
        hash_type, hash_value, url = (data.get(k) for k in ("hash_type", "hash_value", "download_url"))
        if hash_type != "SHA1" or not hash_value or not url:
            raise UnknownOutcome("bill answer without a SHA1 hash or a download_url", code="bad_channel_answer")
        # The file itself is not signed: the SHA1 from the signed answer above vouches for it.
        answer = self._download(str(url))
        if answer.status_code != 200:
            answer.file.close()
            raise Retryable(f"bill download failed ({answer.status_code})", code="bill_unavailable")
        if file_digest(answer.file) != str(hash_value).lower():
            answer.file.close()
            raise Retryable("bill download does not match its hash", code="bill_hash_mismatch")
        return BillFile(answer.file, _bill_rows)

    # -- notifications ---------------------------------------------------------------------------------

    def parse_notification(self, *, headers: Mapping[str, str], body: bytes) -> Notification:
        lower = {k.lower(): v for k, v in headers.items()}
        problem = signing.check_signed(self.platform_key, self.platform_key_id, lower, body)
        if problem:
            raise InvalidNotification(problem)
        try:
            message = json.loads(body)
            event, notification_id = str(message["event_type"]), str(message["id"])
            resource = message["resource"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidNotification("malformed") from exc
        try:
            data = json.loads(signing.decrypt(self.apiv3_key, resource))
        except (ValueError, TypeError, AttributeError) as exc:
            raise InvalidNotification("decrypt_failed") from exc
        if not isinstance(data, dict) or data.get("mchid") != self.mchid:
            raise InvalidNotification("wrong_merchant")
        if event not in EVENTS:
            # Verified, but nothing we act on: acknowledge it, or WeChat retries it for a day.
            return Notification(notification_id, str(data.get("out_trade_no", "")))
        try:
            if event == "TRANSACTION.SUCCESS":
                trade = _trade(data)
                return Notification(notification_id, trade.out_trade_no, trade=trade)
            return Notification(notification_id, str(data["out_trade_no"]), refund=_refund(data, data["refund_status"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidNotification("malformed") from exc

    def notification_reply(self, *, accepted: bool) -> NotificationReply:
        if accepted:
            return NotificationReply(204)
        body = json.dumps({"code": "FAIL", "message": "notification rejected"}).encode()
        return NotificationReply(400, body, "application/json")
