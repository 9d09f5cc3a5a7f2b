"""The Alipay channel adapter: QR-code payments through the open platform gateway (RSA2).

Operations (opendocs.alipay.com/apis): alipay.trade.precreate, .query, .close, .refund, .fastpay.refund.query and
alipay.data.dataservice.bill.downloadurl.query; inbound trade_status_sync notifications. Alipay's quirks that
shape this code:
- precreate only makes a QR code. The trade exists at Alipay once the payer scans it; until then query and close
  answer ACQ.TRADE_NOT_EXIST (NOT_FOUND here), and a repeated precreate of the same out_trade_no returns the
  same QR code, so creating again after an unanswered create is safe.
- A refund answer with ``fund_change=Y`` is a refund made; ``N`` means this call moved no money (e.g. a repeat
  of a refund already made), and the refund query decides. A refund query without ``refund_status`` means the
  refund was not received or failed, and a resend with the same out_request_no cannot refund twice.
- A fully refunded trade is TRADE_CLOSED at Alipay, like an unpaid one that was closed.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import zipfile
from collections.abc import Iterator, Mapping
from typing import IO, Any
from urllib.parse import parse_qsl

import httpx

from channels.alipay import signing
from channels.base import (
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
)
from channels.http import Timeouts, download, new_client, send
from channels.money import fee_from_major, from_major, to_major

# Alipay's codes and sub_codes → (our outcome kind, our failure code): the only place that reads them. A sub_code
# listed here wins over its code (opendocs.alipay.com/common/02km9f and each API's error list).
ERRORS: dict[str, tuple[type[ChannelError], str]] = {
    "20000": (Retryable, "channel_system_error"),  # service unavailable
    "40001": (Refused, "invalid_request"),  # missing required arguments
    "40002": (Refused, "invalid_request"),  # invalid arguments
    "40004": (Refused, "channel_refused"),  # business failed, sub_code not listed below
    "40005": (Retryable, "channel_rate_limited"),  # call limited
    # Our own signature was refused: a configuration problem, not the payer's. Retrying keeps the order visible
    # as stuck instead of failing every merchant's orders.
    "isv.invalid-signature": (Retryable, "channel_auth_failed"),
    "isv.app-call-limited": (Retryable, "channel_rate_limited"),
    "isv.method-call-limited": (Retryable, "channel_rate_limited"),
    "ACQ.SYSTEM_ERROR": (Retryable, "channel_system_error"),
    "ACQ.INVALID_PARAMETER": (Refused, "invalid_request"),
    "ACQ.ACCESS_FORBIDDEN": (Refused, "channel_refused"),
    "ACQ.TRADE_NOT_EXIST": (Refused, "trade_not_found"),
    "ACQ.TRADE_HAS_CLOSE": (Refused, "trade_closed"),
    "ACQ.TRADE_STATUS_ERROR": (Refused, "trade_status_invalid"),
    "ACQ.TOTAL_FEE_EXCEED": (Refused, "amount_too_large"),
    "ACQ.CONTEXT_INCONSISTENT": (Refused, "duplicate_out_trade_no"),
    "ACQ.REASON_TRADE_REFUND_FEE_ERR": (Refused, "refund_exceeds_amount"),
    "ACQ.DISCORDANT_REPEAT_REQUEST": (Refused, "duplicate_out_refund_no"),
    # The day's bill is not there: not generated yet (about 09:00 the next morning), or a day to come.
    "isp.bill_not_exist": (BillNotReady, "bill_not_found"),
}
HTTP_STATUSES: dict[int, tuple[type[ChannelError], str]] = {
    429: (Retryable, "channel_rate_limited"),
    500: (Retryable, "channel_system_error"),  # any 5xx: the gateway or a proxy in front of it failed
}

TRADE_STATUSES = {
    "WAIT_BUYER_PAY": TradeStatus.WAITING,
    "TRADE_SUCCESS": TradeStatus.SUCCEEDED,
    "TRADE_FINISHED": TradeStatus.SUCCEEDED,  # paid, and past the refund period
    "TRADE_CLOSED": TradeStatus.CLOSED,  # closed unpaid, or paid and then fully refunded
}
# Alipay rejects these in a subject (opendocs: "不可使用特殊字符，如 /，=，&").
SUBJECT_FORBIDDEN = re.compile(r"[/=&]")
BILL_DETAIL_TITLE = "#支付宝业务明细查询"
BILL_KINDS = {"交易": "payment", "退款": "refund"}


def _error(code: str, sub_code: str) -> ChannelError:
    kind, ours = ERRORS.get(sub_code) or ERRORS.get(code) or (UnknownOutcome, "channel_error")
    return kind(f"alipay answered {code} {sub_code or '(no sub_code)'}", code=ours)


def _malformed(what: str) -> UnknownOutcome:
    return UnknownOutcome(f"alipay answer malformed: {what}", code="channel_error")


def _trade(data: Mapping[str, Any]) -> TradeResult:
    status = TRADE_STATUSES[data["trade_status"]]
    return TradeResult(
        out_trade_no=data["out_trade_no"],
        status=status,
        amount=from_major(data["total_amount"], "CNY"),
        currency="CNY",
        channel_trade_no=data.get("trade_no"),
        paid_at=signing.parse_time(data.get("send_pay_date")) if status == TradeStatus.SUCCEEDED else None,
    )


def _detail_member(archive: zipfile.ZipFile) -> str:
    # Identify the detail file by its title line: the member names are GBK without the UTF-8 flag at Alipay,
    # so a zip reader may show them garbled.
    for name in archive.namelist():
        with archive.open(name) as member:
            first = member.readline(200).decode("gbk", errors="replace").lstrip("\ufeff")
        if first.startswith(BILL_DETAIL_TITLE):
            return name
    raise ValueError("no detail file in the bill")


def parse_bill(file: IO[bytes]) -> Iterator[BillRow]:
    """The rows of a trade bill, read one at a time: a zip of GBK CSVs, of which the detail one ("业务明细")
    lists every payment and refund completed that day. Comment lines start with ``#``; cells carry trailing
    tabs."""
    with zipfile.ZipFile(file) as archive, archive.open(_detail_member(archive)) as member:
        text = io.TextIOWrapper(member, encoding="gbk", newline="")
        reader = csv.reader(line for line in text if line.strip() and not line.startswith("#"))
        header = [cell.strip() for cell in next(reader)]
        for cells in reader:
            row = dict(zip(header, (cell.strip() for cell in cells), strict=True))
            kind = BILL_KINDS.get(row["业务类型"])
            if kind is None:
                continue
            yield BillRow(
                kind=kind,
                out_trade_no=row["商户订单号"],
                # Refund rows carry negative amounts; our rows are positive with a kind.
                amount=abs(from_major(row["订单金额（元）"], "CNY")),
                currency="CNY",
                status=TradeStatus.SUCCEEDED.value,  # the bill lists completed payments and refunds only
                channel_trade_no=row["支付宝交易号"] or None,
                out_refund_no=(row["退款批次号/请求号"] or None) if kind == "refund" else None,
                completed_at=signing.parse_time(row["完成时间"]),
                # Alipay prints the service fee charged as a negative number (and a refund's fee given back
                # as a positive one); ours is positive when charged.
                fee=-fee_from_major(row.get("服务费（元）", ""), "CNY"),
            )


class AlipayChannel(Channel):
    name = "alipay"
    currencies = frozenset({"CNY"})
    bill_timezone = "Asia/Shanghai"

    def __init__(
        self, *, gateway_url: str, app_id: str, app_private_key: str, alipay_public_key: str, timeouts: Timeouts
    ) -> None:
        self.gateway_url = gateway_url
        self.app_id = self.account = app_id
        self.private_key = signing.load_private_key(app_private_key)
        self.alipay_public_key = signing.load_public_key(alipay_public_key)
        self.client = new_client(timeouts)

    # -- transport -------------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        biz: Mapping[str, Any],
        *,
        notify_url: str = "",
        allow: frozenset[str] = frozenset(),
    ) -> tuple[str, dict[str, Any]]:
        """(allowed sub_code or "", verified answer) of one gateway call; other failures are raised as outcomes."""
        params = {
            "app_id": self.app_id,
            "method": method,
            "format": "JSON",
            "charset": "utf-8",
            "sign_type": "RSA2",
            "timestamp": signing.format_time(dt.datetime.now(dt.UTC)),
            "version": "1.0",
            "notify_url": notify_url,
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        params = {k: v for k, v in params.items() if v}
        params["sign"] = signing.sign(self.private_key, signing.canonical(params))
        response = send(self.client, self.client.build_request("POST", self.gateway_url, data=params))
        data = self._verified(method, response)
        code, sub_code = str(data.get("code", "")), str(data.get("sub_code", ""))
        if code == "10000":
            return "", data
        if sub_code in allow:
            return sub_code, data
        raise _error(code, sub_code)

    def _verified(self, method: str, response: httpx.Response) -> dict[str, Any]:
        """The ``<method>_response`` object of an answer whose signature verifies with Alipay's key."""
        if response.status_code == 429:
            kind, code = HTTP_STATUSES[429]
            retry_after = response.headers.get("Retry-After", "")
            retry_after_s = float(retry_after) if retry_after.isdigit() else None
            raise kind("alipay rate limited", code=code, retry_after_s=retry_after_s)
        try:
            raw, signature = signing.extract_response(response.content.decode("utf-8"), method)
        except ValueError:  # includes undecodable bytes and non-JSON bodies
            raw, signature = "", None
        if not raw or not signing.verify(self.alipay_public_key, raw, signature):
            if response.status_code >= 500:
                kind, code = HTTP_STATUSES[500]
                raise kind(f"alipay answered HTTP {response.status_code}", code=code)
            # Unsigned (e.g. the gateway's error_response) or forged: nothing in it can be trusted, not even a
            # "did not happen". Query before anything else.
            raise UnknownOutcome("alipay answer failed signature verification", code="bad_channel_signature")
        data: dict[str, Any] = json.loads(raw)  # an object: extract_response checked it
        return data

    @staticmethod
    def _check(data: Mapping[str, Any], field: str, expected: str) -> None:
        # A signed answer replayed from another call would name another trade or refund.
        if data.get(field) not in (None, expected):
            raise UnknownOutcome(f"alipay answer names another {field}", code="bad_channel_signature")

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
        if currency != "CNY":
            raise Refused("alipay takes CNY only", code="currency_not_supported")
        biz = {
            "out_trade_no": out_trade_no,
            "total_amount": to_major(amount, "CNY"),
            "subject": SUBJECT_FORBIDDEN.sub(" ", description)[:256].strip() or out_trade_no,
            # The QR code stops working when the order expires, so an expired order cannot be paid later.
            "time_expire": signing.format_time(expires_at),
        }
        allow = frozenset({"ACQ.TRADE_HAS_SUCCESS", "ACQ.TRADE_HAS_CLOSE"})
        code, data = self._call("alipay.trade.precreate", biz, notify_url=notify_url, allow=allow)
        if code:
            # The trade went further than a create can take it (paid or closed): answer it as it stands.
            return self.query_trade(out_trade_no=out_trade_no)
        self._check(data, "out_trade_no", out_trade_no)
        try:
            pay_url = str(data["qr_code"])
        except KeyError:
            raise _malformed("no qr_code") from None
        # precreate does not echo the amount, and there is no trade_no until the payer scans the code.
        return TradeResult(out_trade_no, TradeStatus.WAITING, currency="CNY", pay_url=pay_url)

    def query_trade(self, *, out_trade_no: str) -> TradeResult:
        code, data = self._call(
            "alipay.trade.query", {"out_trade_no": out_trade_no}, allow=frozenset({"ACQ.TRADE_NOT_EXIST"})
        )
        if code:
            return TradeResult(out_trade_no, TradeStatus.NOT_FOUND)
        self._check(data, "out_trade_no", out_trade_no)
        try:
            return _trade(data)
        except (KeyError, ValueError) as exc:
            raise _malformed(f"trade {exc}") from None

    def close_trade(self, *, out_trade_no: str) -> TradeResult:
        allow = frozenset({"ACQ.TRADE_NOT_EXIST", "ACQ.TRADE_STATUS_ERROR"})
        code, data = self._call("alipay.trade.close", {"out_trade_no": out_trade_no}, allow=allow)
        if code == "ACQ.TRADE_NOT_EXIST":
            # Also the answer for a QR code nobody has scanned yet; it stays payable until its time_expire.
            return TradeResult(out_trade_no, TradeStatus.NOT_FOUND)
        if code:
            # Only a trade waiting for the payer can be closed: say how this one stands (paid or closed).
            return self.query_trade(out_trade_no=out_trade_no)
        self._check(data, "out_trade_no", out_trade_no)
        return TradeResult(out_trade_no, TradeStatus.CLOSED, currency="CNY", channel_trade_no=data.get("trade_no"))

    def refund(
        self, *, out_trade_no: str, out_refund_no: str, amount: int, total_amount: int, currency: str, reason: str
    ) -> RefundResult:
        biz = {
            "out_trade_no": out_trade_no,
            "refund_amount": to_major(amount, currency),
            # One per refund, and the same on every retry: Alipay refunds an out_request_no once.
            "out_request_no": out_refund_no,
            "refund_reason": reason[:256],
        }
        _, data = self._call("alipay.trade.refund", {k: v for k, v in biz.items() if v})
        self._check(data, "out_trade_no", out_trade_no)
        if data.get("fund_change") == "Y":
            # refund_fee in the answer is the trade's refunded total, not this refund's amount.
            return RefundResult(
                out_refund_no, RefundStatus.SUCCEEDED, currency="CNY",
                succeeded_at=signing.parse_time(data.get("gmt_refund_pay")),
            )
        found = self.query_refund(out_trade_no=out_trade_no, out_refund_no=out_refund_no)
        return found if found.status != RefundStatus.NOT_FOUND else RefundResult(out_refund_no, RefundStatus.PROCESSING)

    def query_refund(self, *, out_trade_no: str, out_refund_no: str) -> RefundResult:
        biz = {"out_trade_no": out_trade_no, "out_request_no": out_refund_no, "query_options": ["gmt_refund_pay"]}
        code, data = self._call("alipay.trade.fastpay.refund.query", biz, allow=frozenset({"ACQ.TRADE_NOT_EXIST"}))
        if code or data.get("refund_status") != "REFUND_SUCCESS":
            return RefundResult(out_refund_no, RefundStatus.NOT_FOUND)
        self._check(data, "out_request_no", out_refund_no)
        try:
            return RefundResult(
                out_refund_no, RefundStatus.SUCCEEDED, amount=from_major(data["refund_amount"], "CNY"),
                currency="CNY", succeeded_at=signing.parse_time(data.get("gmt_refund_pay")),
            )
        except (KeyError, ValueError) as exc:
            raise _malformed(f"refund {exc}") from None

    def download_bill(self, *, day: dt.date) -> BillFile:
        biz = {"bill_type": "trade", "bill_date": day.isoformat()}
        _, data = self._call("alipay.data.dataservice.bill.downloadurl.query", biz)
        url = data.get("bill_download_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _malformed("no bill_download_url")
        # The file itself is not signed; its URL came in a signed answer and is good for 30 seconds.
        answer = download(self.client, self.client.build_request("GET", url))
        if answer.status_code != 200:
            answer.file.close()
            raise Retryable(f"bill download answered HTTP {answer.status_code}", code="bill_unavailable")
        try:
            zipfile.ZipFile(answer.file).close()  # a truncated or garbled download is caught here, not midway
        except zipfile.BadZipFile:
            answer.file.close()
            raise Retryable("bill unreadable: BadZipFile", code="bill_malformed") from None
        return BillFile(answer.file, parse_bill)

    # -- notifications ---------------------------------------------------------------------------------

    def parse_notification(self, *, headers: Mapping[str, str], body: bytes) -> Notification:
        try:
            params = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True))
        except (UnicodeDecodeError, ValueError):
            raise InvalidNotification("malformed") from None
        if not params.get("sign"):
            raise InvalidNotification("missing_signature")
        if params.get("sign_type") != "RSA2":
            raise InvalidNotification("unsupported_sign_type")
        content = signing.canonical(params, exclude=signing.NOTIFICATION_UNSIGNED)
        if not signing.verify(self.alipay_public_key, content, params["sign"]):
            raise InvalidNotification("bad_signature")
        if params.get("app_id") != self.app_id:
            raise InvalidNotification("wrong_app_id")  # signed by Alipay, but for another app of ours
        try:
            notify_id, out_trade_no = params["notify_id"], params["out_trade_no"]
            if params.get("out_biz_no") and params.get("gmt_refund"):
                # A trade_status_sync sent because of a refund: out_biz_no is our out_request_no. Its refund_fee
                # is the trade's refunded total, so the refund's own amount is not known from it.
                refund = RefundResult(
                    params["out_biz_no"], RefundStatus.SUCCEEDED, currency="CNY",
                    succeeded_at=signing.parse_time(params["gmt_refund"]),
                )
                return Notification(notify_id, out_trade_no, refund=refund)
            status = TRADE_STATUSES[params["trade_status"]]
            trade = TradeResult(
                out_trade_no, status, amount=from_major(params["total_amount"], "CNY"), currency="CNY",
                channel_trade_no=params.get("trade_no"),
                paid_at=signing.parse_time(params.get("gmt_payment")) if status == TradeStatus.SUCCEEDED else None,
            )
            return Notification(notify_id, out_trade_no, trade=trade)
        except (KeyError, ValueError):
            raise InvalidNotification("malformed") from None

    def notification_reply(self, *, accepted: bool) -> NotificationReply:
        # Alipay stops retrying only when the body is exactly "success"; anything else asks for a retry.
        return NotificationReply(200, b"success") if accepted else NotificationReply(400, b"fail")
