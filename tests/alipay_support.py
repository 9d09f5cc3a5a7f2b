"""Test doubles at the network edge for the Alipay tests: a notification receiver, and a scripted gateway for the
few answers the simulator never gives (Alipay's own outages, a forged answer). No Django here."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from channels.alipay import signing
from channels.alipay.adapter import AlipayChannel
from channels.alipay.simulator import AlipaySimulator, public_pem
from channels.http import Timeouts

EXPIRES = dt.datetime(2035, 1, 1, tzinfo=dt.UTC)
FAST = Timeouts(connect_s=1, read_s=1, write_s=1)


def open_account(sim: AlipaySimulator) -> dict[str, str]:
    response = httpx.post(f"{sim.base_url}/_sim/accounts", json={})
    response.raise_for_status()
    return response.json()


def channel_for(url: str, account: dict[str, str], **overrides: str) -> AlipayChannel:
    """An adapter configured from a `/_sim/accounts` answer, as a merchant would configure it."""
    keys = {"app_id": account["app_id"], "app_private_key": account["app_private_key"],
            "alipay_public_key": account["alipay_public_key"], **overrides}
    return AlipayChannel(gateway_url=f"{url}/gateway.do", timeouts=FAST, **keys)


def create(channel: AlipayChannel, out_trade_no: str = "ord_a1", amount: int = 1050, **extra: Any):
    return channel.create_trade(
        out_trade_no=out_trade_no, amount=amount, currency="CNY", description="Coffee beans 1kg",
        notify_url=extra.pop("notify_url", "http://127.0.0.1:9/callbacks/alipay"),
        expires_at=extra.pop("expires_at", EXPIRES), **extra,
    )


def refund(channel: AlipayChannel, out_refund_no: str, amount: int, out_trade_no: str = "ord_a1"):
    return channel.refund(out_trade_no=out_trade_no, out_refund_no=out_refund_no, amount=amount, total_amount=1050,
                          currency="CNY", reason="damaged")


def pay(pay_url: str) -> None:
    httpx.post(pay_url, data={"action": "pay"}).raise_for_status()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: Any


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply = self.server.owner.received(dict(self.headers), body)
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


class Receiver:
    """A merchant's notify_url: keeps every body, answers `reply` (Alipay wants exactly `success`)."""

    def __init__(self, reply: bytes = b"success") -> None:
        self.reply = reply
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def received(self, headers: dict[str, str], body: bytes) -> bytes:
        with self._lock:
            self.bodies.append(body)
            self.headers.append(headers)
        return self.reply


class _GatewayHandler(BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, body = self.server.owner.next()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        if status == 429:
            self.send_header("Retry-After", "3")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


class Gateway:
    """Answers with what the test queued, signed with `key` (Alipay's key, or a forger's)."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_pem = public_pem(self.key.public_key())
        self.answers: list[tuple[int, bytes]] = []

    def queue(self, method: str, payload: dict[str, Any], status: int = 200) -> None:
        self.answers.append((status, signing.response_body(method, payload, self.key)))

    def queue_raw(self, body: bytes, status: int = 200) -> None:
        self.answers.append((status, body))

    def next(self) -> tuple[int, bytes]:
        return self.answers.pop(0) if self.answers else (500, b"")


@contextmanager
def serving(owner: Receiver | Gateway) -> Iterator[str]:
    """Serve `owner` on a free loopback port; yields its base URL."""
    handler = _ReceiverHandler if isinstance(owner, Receiver) else _GatewayHandler
    server = _Server(("127.0.0.1", 0), handler)
    server.owner = owner
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
