"""The sandbox channel's simulator: the gateway of PROTOCOL.md, as a separate HTTP server (SIMULATORS.md).

Run it with `python manage.py run_simulator sandbox`, or without Django with `python -m channels.sandbox.simulator`.
Numbers (`out_trade_no`, `out_refund_no`) are unique across the whole simulator rather than per merchant,
because the payer page `/pay/<out_trade_no>` names no merchant; another merchant's trade reads as not found.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

from channels.sandbox.signing import (
    MERCHANT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign_message,
    sign_request,
    signatures_equal,
    timestamp_fresh,
)
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

DEFAULT_PORT = 8101
RETRY_SCHEDULE = (15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
CURRENCIES = {"CNY": 2, "USD": 2, "EUR": 2, "JPY": 0}  # minor-unit exponents
MAX_AMOUNT = 10**12
NUMBER_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
BILL_COLUMNS = [
    "type",
    "out_trade_no",
    "trade_no",
    "out_refund_no",
    "refund_no",
    "amount",
    "currency",
    "status",
    "completed_at",
]


@dataclass(eq=False)
class Refund:
    merchant_id: str
    out_trade_no: str
    out_refund_no: str
    refund_no: str
    amount: int
    currency: str
    reason: str
    created_at: float
    status: str = "SUCCEEDED"  # refunds succeed at once (PROTOCOL.md)
    succeeded_at: float | None = None


@dataclass(eq=False)
class Trade:
    merchant_id: str
    out_trade_no: str
    trade_no: str
    amount: int
    currency: str
    description: str
    notify_url: str | None
    expires_at: float | None
    created_at: float
    status: str = "WAITING"
    paid_at: float | None = None
    closed_at: float | None = None
    failed_attempts: int = 0
    refunds: list[Refund] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)


def _time(t: float | None) -> str | None:
    return rfc3339(t) if t is not None else None


def _zone(name: str) -> Any:
    if name in ("UTC", "Etc/UTC"):
        return UTC
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def _parse_time(value: Any) -> float | None:
    """PROTOCOL.md times: Unix seconds or RFC 3339."""
    if value is None:
        return None
    if type(value) in (int, float):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    raise BadRequest("expires_at must be Unix seconds or RFC 3339")


def _field(body: dict[str, Any], name: str, kind: str, required: bool = True) -> Any:
    value = body.get(name)
    if value is None and not required:
        return None
    if kind == "number" and not (isinstance(value, str) and NUMBER_RE.fullmatch(value)):
        raise BadRequest(f"{name} must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    if kind == "amount" and not (type(value) is int and 0 < value <= MAX_AMOUNT):
        raise BadRequest(f"{name} must be a positive integer in minor units")
    if kind == "text" and not (isinstance(value, str) and len(value) <= 256):
        raise BadRequest(f"{name} must be a string of at most 256 characters")
    return value


def _corrupt(signature: str) -> str:
    return signature[:-1] + format((int(signature[-1], 16) + 1) % 16, "x")


class SandboxSimulator(ChannelSimulator):
    name = "sandbox"
    retry_schedule = RETRY_SCHEDULE

    def __init__(
        self,
        accounts: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        public_base_url: str | None = None,
        notify_hosts: Iterable[str] = (),
        bill_timezone: str = "UTC",
    ) -> None:
        super().__init__(host, port, public_base_url, notify_hosts)
        # Bills cover calendar days of this zone (UTC unless configured: SANDBOX_BILL_TIMEZONE).
        self.bill_zone = _zone(bill_timezone)
        self.accounts: dict[str, str] = dict(accounts or {})
        self.trades: dict[str, Trade] = {}
        self.refunds: dict[str, Refund] = {}
        self.route("POST", r"/v1/trades", self._create, "create")
        self.route("GET", r"/v1/trades/(?P<out_trade_no>[^/]+)", self._query, "query")
        self.route("POST", r"/v1/trades/(?P<out_trade_no>[^/]+)/close", self._close, "close")
        self.route("POST", r"/v1/refunds", self._refund, "refund")
        self.route("GET", r"/v1/refunds/(?P<out_refund_no>[^/]+)", self._refund_query, "refund_query")
        self.route("GET", r"/v1/bills/(?P<day>[^/]+)", self._bill, "bill")
        self.route("GET", r"/pay/(?P<out_trade_no>[^/]+)", self._pay_page)
        self.route("POST", r"/pay/(?P<out_trade_no>[^/]+)", self._pay_action)

    # -- hooks -----------------------------------------------------------------------------------------------

    def authenticate(self, req: Request) -> tuple[Any, Response | None]:
        merchant_id = req.headers.get(MERCHANT_HEADER) or ""
        timestamp = req.headers.get(TIMESTAMP_HEADER) or ""
        secret = self.accounts.get(merchant_id)
        if secret is None:
            problem = "missing or unknown merchant"
        elif not timestamp_fresh(timestamp):
            problem = "missing or stale timestamp"
        elif not signatures_equal(
            sign_request(secret, timestamp, req.method, req.target, req.body), req.headers.get(SIGNATURE_HEADER)
        ):
            problem = "missing or wrong signature"
        else:
            return merchant_id, None
        # Unsigned: without a valid merchant and signature the gateway cannot know which key to use.
        return None, Response.json(401, {"error": {"code": "SIGNATURE_INVALID", "message": problem}})

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
            return self._error(ctx, 403, "REFUSED", "refused by risk control")
        if mode == "rate_limit":
            return self._error(ctx, 429, "RATE_LIMITED", "too many requests", {"Retry-After": "1"})
        return self._error(ctx, 500, "SYSTEM_ERROR", "system error, try again")

    def trade_snapshot(self, out_trade_no: str) -> dict[str, Any] | None:
        trade = self._lookup(out_trade_no)
        if trade is None:
            return None
        return {
            "out_trade_no": trade.out_trade_no,
            "trade_no": trade.trade_no,
            "status": trade.status,
            "amount": trade.amount,
            "currency": trade.currency,
            "create_calls": self.create_calls.get(out_trade_no, 0),
            "paid_at": _time(trade.paid_at),
            "refunds": [
                {"out_refund_no": r.out_refund_no, "amount": r.amount, "status": r.status} for r in trade.refunds
            ],
            "notifications": self.notification_attempts(trade.notifications),
        }

    def open_account(self, body: Any) -> dict[str, Any]:
        merchant_id, secret = f"sbx_m_{secrets.token_hex(8)}", secrets.token_urlsafe(32)
        self.accounts[merchant_id] = secret
        return {"merchant_id": merchant_id, "secret": secret}

    def reset_state(self) -> None:
        self.trades.clear()
        self.refunds.clear()

    # -- answers ---------------------------------------------------------------------------------------------

    def _signed(self, merchant_id: str, response: Response) -> Response:
        timestamp = str(int(time.time()))
        response.headers[TIMESTAMP_HEADER] = timestamp
        response.headers[SIGNATURE_HEADER] = sign_message(self.accounts[merchant_id], timestamp, response.body)
        return response

    def _answer(self, merchant_id: str, obj: dict[str, Any]) -> Response:
        return self._signed(merchant_id, Response.json(200, obj))

    def _error(
        self, merchant_id: str, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> Response:
        return self._signed(merchant_id, Response.json(status, {"error": {"code": code, "message": message}}, headers))

    def _trade_json(self, trade: Trade) -> dict[str, Any]:
        return {
            "object": "trade",
            "out_trade_no": trade.out_trade_no,
            "trade_no": trade.trade_no,
            "status": trade.status,
            "amount": trade.amount,
            "currency": trade.currency,
            "description": trade.description,
            "pay_url": f"{self.public_base_url}/pay/{quote(trade.out_trade_no, safe='')}",
            "created_at": _time(trade.created_at),
            "paid_at": _time(trade.paid_at),
            "closed_at": _time(trade.closed_at),
        }

    @staticmethod
    def _refund_json(refund: Refund) -> dict[str, Any]:
        return {
            "object": "refund",
            "out_trade_no": refund.out_trade_no,
            "out_refund_no": refund.out_refund_no,
            "refund_no": refund.refund_no,
            "status": refund.status,
            "amount": refund.amount,
            "currency": refund.currency,
            "created_at": _time(refund.created_at),
            "succeeded_at": _time(refund.succeeded_at),
        }

    # -- ledger ----------------------------------------------------------------------------------------------

    def _lookup(self, out_trade_no: str, merchant_id: str | None = None) -> Trade | None:
        with self.lock:
            trade = self.trades.get(out_trade_no)
            if trade is None or (merchant_id is not None and trade.merchant_id != merchant_id):
                return None
            # Expiry is applied lazily, whenever the trade is looked at.
            if trade.status == "WAITING" and trade.expires_at is not None and time.time() >= trade.expires_at:
                trade.status, trade.closed_at = "CLOSED", trade.expires_at
            return trade

    def _notify(self, trade: Trade, type_: str, data: dict[str, Any]) -> None:
        if not trade.notify_url:
            return
        secret = self.accounts[trade.merchant_id]
        notification_id, created_at = f"sbx_n_{secrets.token_hex(12)}", rfc3339(time.time())

        def render(tamper_amount: bool, bad_signature: bool) -> tuple[bytes, dict[str, str]]:
            payload = {**data, "amount": data["amount"] + 1} if tamper_amount else data
            body = json.dumps(
                {"id": notification_id, "type": type_, "created_at": created_at, "data": payload}
            ).encode()
            timestamp = str(int(time.time()))
            signature = sign_message(secret, timestamp, body)
            return body, {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: _corrupt(signature) if bad_signature else signature,
            }

        notification = Notification(notification_id, type_, trade.notify_url, render, key=trade.out_trade_no)
        trade.notifications.append(notification)
        self.notify(notification)

    # -- operations ------------------------------------------------------------------------------------------

    def _create(self, req: Request, merchant_id: str) -> Response:
        try:
            body = req.json_object()
            out_trade_no = _field(body, "out_trade_no", "number")
            amount = _field(body, "amount", "amount")
            currency = body.get("currency")
            if currency not in CURRENCIES:
                raise BadRequest(f"currency must be one of {', '.join(CURRENCIES)}")
            description = _field(body, "description", "text", required=False) or ""
            notify_url = _field(body, "notify_url", "text", required=False)
            if notify_url is not None and not notify_url.startswith(("http://", "https://")):
                raise BadRequest("notify_url must be an http(s) URL")
            expires_at = _parse_time(body.get("expires_at"))
        except BadRequest as exc:
            return self._error(merchant_id, 400, "INVALID_REQUEST", str(exc))
        with self.lock:
            trade = self._lookup(out_trade_no)
            if trade is None:
                trade = Trade(
                    merchant_id,
                    out_trade_no,
                    f"sbx_t_{secrets.token_hex(12)}",
                    amount,
                    currency,
                    description,
                    notify_url,
                    expires_at,
                    time.time(),
                )
                self.trades[out_trade_no] = trade
            elif (trade.merchant_id, trade.amount, trade.currency) != (merchant_id, amount, currency):
                return self._error(
                    merchant_id, 409, "OUT_TRADE_NO_USED", "out_trade_no exists with another amount or currency"
                )
            return self._answer(merchant_id, self._trade_json(trade))

    def _query(self, req: Request, merchant_id: str, out_trade_no: str) -> Response:
        with self.lock:
            trade = self._lookup(out_trade_no, merchant_id)
            if trade is None:
                return self._error(merchant_id, 404, "TRADE_NOT_FOUND", "no such trade")
            return self._answer(merchant_id, self._trade_json(trade))

    def _close(self, req: Request, merchant_id: str, out_trade_no: str) -> Response:
        with self.lock:
            trade = self._lookup(out_trade_no, merchant_id)
            if trade is None:
                return self._error(merchant_id, 404, "TRADE_NOT_FOUND", "no such trade")
            if trade.status == "SUCCEEDED":
                return self._error(merchant_id, 409, "TRADE_PAID", "the trade is paid")
            if trade.status == "WAITING":
                trade.status, trade.closed_at = "CLOSED", time.time()
            return self._answer(merchant_id, self._trade_json(trade))

    def _refund(self, req: Request, merchant_id: str) -> Response:
        try:
            body = req.json_object()
            out_trade_no = _field(body, "out_trade_no", "number")
            out_refund_no = _field(body, "out_refund_no", "number")
            amount = _field(body, "amount", "amount")
            reason = _field(body, "reason", "text", required=False) or ""
        except BadRequest as exc:
            return self._error(merchant_id, 400, "INVALID_REQUEST", str(exc))
        with self.lock:
            refund = self.refunds.get(out_refund_no)
            if refund is not None:
                if (refund.merchant_id, refund.out_trade_no, refund.amount) != (merchant_id, out_trade_no, amount):
                    return self._error(
                        merchant_id, 409, "OUT_REFUND_NO_USED", "out_refund_no exists with another amount"
                    )
                return self._answer(merchant_id, self._refund_json(refund))
            trade = self._lookup(out_trade_no, merchant_id)
            if trade is None:
                return self._error(merchant_id, 404, "TRADE_NOT_FOUND", "no such trade")
            if trade.status == "CLOSED":
                return self._error(merchant_id, 409, "TRADE_CLOSED", "the trade is closed")
            if trade.status == "WAITING":
                return self._error(merchant_id, 409, "TRADE_NOT_PAID", "the trade is not paid")
            if sum(r.amount for r in trade.refunds if r.status == "SUCCEEDED") + amount > trade.amount:
                return self._error(
                    merchant_id, 422, "REFUND_EXCEEDS_AMOUNT", "the refunds would exceed the paid amount"
                )
            now = time.time()
            refund = Refund(
                merchant_id,
                out_trade_no,
                out_refund_no,
                f"sbx_r_{secrets.token_hex(12)}",
                amount,
                trade.currency,
                reason,
                now,
                succeeded_at=now,
            )
            self.refunds[out_refund_no] = refund
            trade.refunds.append(refund)
            self._notify(trade, "refund.succeeded", self._refund_json(refund))
            return self._answer(merchant_id, self._refund_json(refund))

    def _refund_query(self, req: Request, merchant_id: str, out_refund_no: str) -> Response:
        with self.lock:
            refund = self.refunds.get(out_refund_no)
            if refund is None or refund.merchant_id != merchant_id:
                return self._error(merchant_id, 404, "REFUND_NOT_FOUND", "no such refund")
            return self._answer(merchant_id, self._refund_json(refund))

    def _day(self, t: float) -> str:
        return datetime.fromtimestamp(t, self.bill_zone).date().isoformat()

    def _bill(self, req: Request, merchant_id: str, day: str) -> Response:
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
                raise ValueError
            date.fromisoformat(day)
        except ValueError:
            return self._error(merchant_id, 400, "INVALID_REQUEST", "the bill date must be YYYY-MM-DD")
        rows: list[dict[str, Any]] = []
        with self.lock:
            for trade in self.trades.values():
                if trade.merchant_id != merchant_id:
                    continue
                if trade.paid_at is not None and self._day(trade.paid_at) == day:
                    rows.append(
                        {
                            "type": "payment",
                            "out_trade_no": trade.out_trade_no,
                            "trade_no": trade.trade_no,
                            "amount": trade.amount,
                            "currency": trade.currency,
                            "status": "SUCCEEDED",
                            "completed_at": _time(trade.paid_at),
                        }
                    )
                for refund in trade.refunds:
                    if refund.succeeded_at is not None and self._day(refund.succeeded_at) == day:
                        rows.append(
                            {
                                "type": "refund",
                                "out_trade_no": refund.out_trade_no,
                                "trade_no": trade.trade_no,
                                "out_refund_no": refund.out_refund_no,
                                "refund_no": refund.refund_no,
                                "amount": refund.amount,
                                "currency": refund.currency,
                                "status": refund.status,
                                "completed_at": _time(refund.succeeded_at),
                            }
                        )
            adjustment = self.bill_adjustments.get(day)
            if adjustment is not None:
                # Adjustments alter payment rows; a refund row is only ever added explicitly ("type": "refund").
                rows = [r for r in rows if not (r["type"] == "payment" and r["out_trade_no"] in adjustment.drop)]
                for row in rows:
                    if row["type"] == "payment" and row["out_trade_no"] in adjustment.amount:
                        row["amount"] = adjustment.amount[row["out_trade_no"]]
                for extra in adjustment.add:
                    rows.append(
                        {
                            "type": "payment",
                            "trade_no": f"sbx_t_adj_{extra['out_trade_no']}",
                            "currency": "CNY",
                            "status": "SUCCEEDED",
                            **{k: v for k, v in extra.items() if k in BILL_COLUMNS},
                            "completed_at": _time(added_row_time(extra, day, self.bill_zone)),
                        }
                    )
        rows.sort(key=lambda r: str(r.get("completed_at")))
        out = io.StringIO()
        writer = csv.DictWriter(out, BILL_COLUMNS, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        response = Response(200, out.getvalue().encode(), {"Content-Type": "text/csv; charset=utf-8"})
        return self._signed(merchant_id, response)

    # -- the payer page --------------------------------------------------------------------------------------

    def _page(self, status: int, trade: Trade | None, message: str) -> Response:
        parts = [f"<!doctype html><title>Sandbox payment</title><h1>Sandbox payment</h1><p>{html.escape(message)}</p>"]
        if trade is not None:
            exponent = CURRENCIES[trade.currency]
            amount = f"{trade.amount / 10**exponent:.{exponent}f} {trade.currency}"
            parts.append(
                f"<p>Order <code>{html.escape(trade.out_trade_no)}</code>: {html.escape(trade.description)}</p>"
                f'<p class="amount">{amount}</p><p>Status: {trade.status}</p>'
            )
            if trade.status == "WAITING":
                parts.append(
                    '<form method="post"><button name="action" value="pay">Pay</button> '
                    '<button name="action" value="fail">Fail</button></form>'
                )
        return Response.html(status, "\n".join(parts))

    def _pay_page(self, req: Request, out_trade_no: str) -> Response:
        trade = self._lookup(out_trade_no)
        if trade is None:
            return self._page(404, None, "No such order.")
        return self._page(200, trade, "Choose how this payment attempt ends.")

    def _pay_action(self, req: Request, out_trade_no: str) -> Response:
        action = req.form().get("action")
        with self.lock:
            trade = self._lookup(out_trade_no)
            if trade is None:
                return self._page(404, None, "No such order.")
            if action not in ("pay", "fail"):
                return self._page(400, trade, "The action must be pay or fail.")
            if trade.status == "CLOSED":
                return self._page(409, trade, "This order is closed and cannot be paid.")
            if trade.status == "SUCCEEDED":
                return self._page(200, trade, "This order is already paid.")
            if action == "fail":
                trade.failed_attempts += 1
                return self._page(200, trade, "The payment failed; the order can still be paid.")
            trade.status, trade.paid_at = "SUCCEEDED", time.time()
            self._notify(trade, "trade.succeeded", self._trade_json(trade))
            return self._page(200, trade, "Paid.")


def main(argv: list[str] | None = None) -> None:
    """Run without Django; the account comes from SANDBOX_MERCHANT_ID / SANDBOX_SECRET (dev defaults)."""
    parser = argparse.ArgumentParser(description="The sandbox channel simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--public-base-url")
    args = parser.parse_args(argv)
    account = {
        os.environ.get("SANDBOX_MERCHANT_ID", "sbx_m_dev"): os.environ.get("SANDBOX_SECRET", "dev-sandbox-secret")
    }
    run_forever(SandboxSimulator(account, args.host, args.port, args.public_base_url), sys.stdout)


if __name__ == "__main__":
    main()
