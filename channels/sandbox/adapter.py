"""The sandbox channel adapter (wire protocol: PROTOCOL.md beside this file)."""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import json
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any

import httpx

from channels.base import (
    BillCsv,
    BillFile,
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
from channels.http import Timeouts, download, new_client, send
from channels.sandbox import signing

# The sandbox's error codes → (our outcome kind, our failure code). The only place that reads them.
ERROR_CODES: dict[str, tuple[type[ChannelError], str]] = {
    "INVALID_REQUEST": (Refused, "invalid_request"),
    # Our own signature was refused: a configuration problem, not the payer's. Retrying keeps the order
    # visible as stuck instead of failing every merchant's orders.
    "SIGNATURE_INVALID": (Retryable, "channel_auth_failed"),
    "REFUSED": (Refused, "channel_refused"),
    "OUT_TRADE_NO_USED": (Refused, "duplicate_out_trade_no"),
    "TRADE_CLOSED": (Refused, "trade_closed"),
    "TRADE_NOT_PAID": (Refused, "trade_not_paid"),
    "TRADE_NOT_FOUND": (Refused, "trade_not_found"),
    "OUT_REFUND_NO_USED": (Refused, "duplicate_out_refund_no"),
    "REFUND_EXCEEDS_AMOUNT": (Refused, "refund_exceeds_amount"),
    "RATE_LIMITED": (Retryable, "channel_rate_limited"),
    "SYSTEM_ERROR": (Retryable, "channel_system_error"),
}

TRADE_STATUSES = {"WAITING": TradeStatus.WAITING, "SUCCEEDED": TradeStatus.SUCCEEDED, "CLOSED": TradeStatus.CLOSED}
REFUND_STATUSES = {
    "PROCESSING": RefundStatus.PROCESSING,
    "SUCCEEDED": RefundStatus.SUCCEEDED,
    "FAILED": RefundStatus.FAILED,
}


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


def _error(status: int, code: str, retry_after: str | None = None) -> ChannelError:
    if status == 429:
        return Retryable("channel rate limited", code="channel_rate_limited", retry_after_s=float(retry_after or 1))
    if status >= 500:
        return Retryable(f"channel error {status}", code="channel_system_error")
    kind, our_code = ERROR_CODES.get(code, (UnknownOutcome, "channel_error"))
    return kind(f"sandbox answered {status} {code or 'without a code'}", code=our_code)


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _trade(data: Mapping[str, Any]) -> TradeResult:
    return TradeResult(
        out_trade_no=data["out_trade_no"],
        status=TRADE_STATUSES[data["status"]],
        amount=int(data["amount"]),
        currency=data["currency"],
        pay_url=data.get("pay_url"),
        channel_trade_no=data.get("trade_no"),
        paid_at=_time(data.get("paid_at")),
    )


def _refund(data: Mapping[str, Any]) -> RefundResult:
    return RefundResult(
        out_refund_no=data["out_refund_no"],
        status=REFUND_STATUSES[data["status"]],
        amount=int(data["amount"]),
        currency=data.get("currency"),
        channel_refund_no=data.get("refund_no"),
        succeeded_at=_time(data.get("succeeded_at")),
    )


def _bill_rows(file: IO[bytes]) -> Iterator[BillRow]:
    text = io.TextIOWrapper(file, encoding="utf-8", newline="")
    try:
        for row in csv.DictReader(text):
            yield BillRow(
                kind=row["type"],
                out_trade_no=row["out_trade_no"],
                amount=int(row["amount"]),
                currency=row["currency"],
                status=(TRADE_STATUSES if row["type"] == "payment" else REFUND_STATUSES)[row["status"]].value,
                channel_trade_no=row["trade_no"] or None,
                out_refund_no=row["out_refund_no"] or None,
                channel_refund_no=row["refund_no"] or None,
                completed_at=_time(row["completed_at"]),
            )
    finally:
        text.detach()  # the BillFile owns the file


def _status_sql(statuses: Mapping[str, enum.Enum]) -> str:
    return "CASE status " + " ".join(f"WHEN '{k}' THEN '{v.value}'" for k, v in statuses.items()) + " END"


# The same rows as ``_bill_rows``, read by PostgreSQL (``BillCsv``): a status outside the maps is refused.
_STATUS_SQL = (f"CASE WHEN type = 'payment' THEN {_status_sql(TRADE_STATUSES)}"
               f" ELSE {_status_sql(REFUND_STATUSES)} END")
BILL_CSV = BillCsv(
    header=b"type,out_trade_no,trade_no,out_refund_no,refund_no,amount,currency,status,completed_at",
    columns=("type text, out_trade_no text, trade_no text, out_refund_no text, refund_no text,"
             " amount bigint NOT NULL, currency text, status text, completed_at timestamptz,"
             f" CHECK ({_STATUS_SQL} IS NOT NULL)"),
    select=("SELECT type AS kind,"
            " CASE WHEN type = 'refund' AND out_refund_no <> '' THEN out_refund_no ELSE out_trade_no END AS key,"
            " out_trade_no, nullif(out_refund_no, '') AS out_refund_no, nullif(trade_no, '') AS channel_trade_no,"
            f" amount, 0::bigint AS fee, currency, {_STATUS_SQL} AS status, completed_at FROM {{raw}}"),
)


def bill_file(file: IO[bytes]) -> BillFile:
    """A sandbox bill (a spooled file) to reconcile: parsed by ``_bill_rows``, or COPYed as it is."""
    return BillFile(file, _bill_rows, BILL_CSV)


class SandboxChannel(Channel):
    name = "sandbox"
    currencies = frozenset({"CNY", "USD", "EUR", "JPY"})

    def __init__(
        self, *, api_base: str, merchant_id: str, secret: str, timeouts: Timeouts, bill_timezone: str = "UTC"
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.merchant_id = self.account = merchant_id
        self.secret = secret
        self.client = new_client(timeouts)
        self.bill_timezone = bill_timezone  # the simulator's SANDBOX_BILL_TIMEZONE: both sides must agree

    # -- transport -------------------------------------------------------------------------------------

    def _signed(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> httpx.Request:
        body = json.dumps(payload, separators=(",", ":")).encode() if payload is not None else b""
        timestamp = str(int(time.time()))
        headers = {
            signing.MERCHANT_HEADER: self.merchant_id,
            signing.TIMESTAMP_HEADER: timestamp,
            signing.SIGNATURE_HEADER: signing.sign_request(self.secret, timestamp, method, path, body),
        }
        if payload is not None:
            headers["Content-Type"] = "application/json"
        return self.client.build_request(method, self.api_base + path, content=body, headers=headers)

    def _call(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """Send a signed request; return (status, verified JSON or text) or raise an outcome error."""
        response = send(self.client, self._signed(method, path, payload))
        self._verify_answer(response)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.status_code, response.json()
        return response.status_code, response.text

    def _verify_answer(self, response: httpx.Response) -> None:
        if response.status_code in (401, 429) or response.status_code >= 500:
            # The gateway does not sign these (it cannot know the key, or it is overloaded); they carry no
            # business outcome, only "try again".
            raise _error(response.status_code, _error_code(response.content), response.headers.get("Retry-After"))
        timestamp = response.headers.get(signing.TIMESTAMP_HEADER, "")
        expected = signing.sign_message(self.secret, timestamp, response.content)
        if not signing.timestamp_fresh(timestamp) or not signing.signatures_equal(
            expected, response.headers.get(signing.SIGNATURE_HEADER)
        ):
            raise UnknownOutcome("channel answer failed signature verification", code="bad_channel_signature")

    def _json(
        self, method: str, path: str, payload: Mapping[str, Any] | None = None, *, allow: frozenset[str] = frozenset()
    ) -> tuple[str, Any]:
        """(error code or "", JSON body) of a call; error codes outside ``allow`` are raised as outcomes."""
        status, data = self._call(method, path, payload)
        if status >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            code = str(error.get("code", "")) if isinstance(error, dict) else ""
            if code in allow:
                return code, data
            raise _error(status, code)
        return "", data

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
        payload = {
            "out_trade_no": out_trade_no,
            "amount": amount,
            "currency": currency,
            "description": description,
            "notify_url": notify_url,
            "expires_at": expires_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        }
        return _trade(self._json("POST", "/v1/trades", payload)[1])

    def query_trade(self, *, out_trade_no: str) -> TradeResult:
        code, data = self._json("GET", f"/v1/trades/{out_trade_no}", allow=frozenset({"TRADE_NOT_FOUND"}))
        return TradeResult(out_trade_no, TradeStatus.NOT_FOUND) if code else _trade(data)

    def close_trade(self, *, out_trade_no: str) -> TradeResult:
        code, data = self._json(
            "POST", f"/v1/trades/{out_trade_no}/close", allow=frozenset({"TRADE_NOT_FOUND", "TRADE_PAID"})
        )
        if code == "TRADE_NOT_FOUND":
            return TradeResult(out_trade_no, TradeStatus.NOT_FOUND)
        if code == "TRADE_PAID":
            return self.query_trade(out_trade_no=out_trade_no)
        return _trade(data)

    def refund(
        self, *, out_trade_no: str, out_refund_no: str, amount: int, total_amount: int, currency: str, reason: str
    ) -> RefundResult:
        payload = {"out_trade_no": out_trade_no, "out_refund_no": out_refund_no, "amount": amount, "reason": reason}
        return _refund(self._json("POST", "/v1/refunds", payload)[1])

    def query_refund(self, *, out_trade_no: str, out_refund_no: str) -> RefundResult:
        code, data = self._json("GET", f"/v1/refunds/{out_refund_no}", allow=frozenset({"REFUND_NOT_FOUND"}))
        return RefundResult(out_refund_no, RefundStatus.NOT_FOUND) if code else _refund(data)

    def download_bill(self, *, day: dt.date) -> BillFile:
        """The day's bill (``day`` in ``bill_timezone``), streamed to a spool and verified before any row is read."""
        answer = download(self.client, self._signed("GET", f"/v1/bills/{day.isoformat()}"))
        if answer.status_code in (401, 429) or answer.status_code >= 500:
            body = answer.small_body()
            answer.file.close()
            raise _error(answer.status_code, _error_code(body), answer.headers.get("Retry-After"))
        timestamp = answer.headers.get(signing.TIMESTAMP_HEADER, "")
        expected = file_digest(answer.file, lambda: signing.message_mac(self.secret, timestamp))
        if not signing.timestamp_fresh(timestamp) or not signing.signatures_equal(
            expected, answer.headers.get(signing.SIGNATURE_HEADER)
        ):
            answer.file.close()
            raise UnknownOutcome("channel answer failed signature verification", code="bad_channel_signature")
        if answer.status_code >= 400:
            answer.file.close()
            raise Retryable(f"bill not available ({answer.status_code})", code="bill_unavailable")
        return bill_file(answer.file)

    # -- notifications ---------------------------------------------------------------------------------

    def parse_notification(self, *, headers: Mapping[str, str], body: bytes) -> Notification:
        lower = {k.lower(): v for k, v in headers.items()}
        timestamp = lower.get(signing.TIMESTAMP_HEADER.lower(), "")
        signature = lower.get(signing.SIGNATURE_HEADER.lower())
        if not signature:
            raise InvalidNotification("missing_signature")
        if not signing.timestamp_fresh(timestamp):
            raise InvalidNotification("stale_timestamp")
        if not signing.signatures_equal(signing.sign_message(self.secret, timestamp, body), signature):
            raise InvalidNotification("bad_signature")
        try:
            message = json.loads(body)
            data = message["data"]
            if message["type"] == "trade.succeeded":
                trade = _trade(data)
                return Notification(message["id"], trade.out_trade_no, trade=trade)
            if message["type"] == "refund.succeeded":
                refund = _refund(data)
                return Notification(message["id"], data["out_trade_no"], refund=refund)
            # Verified, but nothing we act on: acknowledge it so that the channel stops sending it.
            return Notification(message["id"], str(data.get("out_trade_no", "")))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidNotification("malformed") from exc

    def notification_reply(self, *, accepted: bool) -> NotificationReply:
        if accepted:
            return NotificationReply(200, b'{"received":true}', "application/json")
        return NotificationReply(400, b'{"received":false}', "application/json")
