"""Shared fixtures: named actors, API clients, and the real processes the e2e tests run against."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from channels import keepalive
from channels.breaker import SharedBreaker
from channels.registry import breakers
from payments import services
from payments.models import Merchant
from tests.tls_support import LoopbackCA, make_ca


class Actor:
    def __init__(self, merchant: Merchant, secret_key: str) -> None:
        self.merchant = merchant
        self.secret_key = secret_key

    def client(self) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.secret_key}")
        return client


def make_actor(name: str) -> Actor:
    merchant, key = services.merchant_create(name=name)
    return Actor(merchant, key)


@pytest.fixture(autouse=True)
def _no_known_keys() -> None:
    """Each test starts with no key cached by the web side (rows of earlier tests are rolled back)."""
    from payments.api.auth import forget_keys

    forget_keys()


@pytest.fixture
def merchant_a(db) -> Actor:
    return make_actor("Merchant A")


@pytest.fixture
def merchant_b(db) -> Actor:
    return make_actor("Merchant B")


@pytest.fixture
def client_a(merchant_a: Actor) -> APIClient:
    return merchant_a.client()


@pytest.fixture
def client_b(merchant_b: Actor) -> APIClient:
    return merchant_b.client()


@pytest.fixture
def outsider() -> APIClient:
    return APIClient()


# -- API test helpers (appended for the API/FSM modules) -------------------------------------------------

import re  # noqa: E402

from channels.base import TradeResult, TradeStatus  # noqa: E402
from payments.models import Order  # noqa: E402

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def assert_api_error():
    """Check a response against API.md's error envelope; returns the ``error`` object for further checks."""

    def check(response, status: int, type: str, code: str, param: str | None = None) -> dict:
        assert response.status_code == status, response.content
        error = response.json()["error"]
        assert set(error) == {"type", "code", "message", "param", "trace_id"}
        assert (error["type"], error["code"], error["param"]) == (type, code, param)
        assert error["message"]
        assert HEX32.match(error["trace_id"])
        assert error["trace_id"] == response["X-Trace-Id"]
        return error

    return check


@pytest.fixture
def paid_order():
    """Make an order of ``actor`` and put it into ``succeeded`` through the real service, as a channel answer."""

    def make(actor: Actor, *, amount: int = 1000, currency: str = "CNY", merchant_order_no: str = "PAID-1") -> Order:
        order, _ = services.order_create(
            merchant=actor.merchant, merchant_order_no=merchant_order_no, amount=amount, currency=currency,
            channel="sandbox",
        )
        trade = TradeResult(
            out_trade_no=order.public_id, status=TradeStatus.SUCCEEDED, amount=order.amount,
            currency=order.currency, channel_trade_no="t1",
        )
        return services.order_apply_trade(order_id=order.pk, trade=trade, source="worker")

    return make


@pytest.fixture
def sandbox_breaker() -> Iterator[SharedBreaker]:
    """The sandbox primary's shared breaker, reset before and after the test."""
    (breaker,) = [b for b in breakers() if b.channel == "sandbox"]
    breaker.reset()
    yield breaker
    breaker.reset()


@pytest.fixture
def web_log() -> Iterator[io.StringIO]:
    """The JSON lines this (web) process writes while the test runs."""
    from pythonjsonlogger.json import JsonFormatter

    from payments_site.logs import ContextFilter

    formatter_config = settings.LOGGING["formatters"]["json"]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(
        formatter_config["format"], rename_fields=formatter_config["rename_fields"], timestamp=True,
    ))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass  # a line cut by a concurrent write of the banner; not ours to check
    return lines


@pytest.fixture
def test_ca(tmp_path, monkeypatch) -> Iterator[LoopbackCA]:
    """A CA of the test's own, trusted by the channel calls and the webhook POSTs (``SSL_CERT_FILE``) for the test
    only."""
    ca = make_ca(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_file))
    keepalive.tls_context.cache_clear()
    yield ca
    keepalive.tls_context.cache_clear()
