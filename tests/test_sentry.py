"""Sentry, with the project's own options and a transport that keeps what would be sent."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from channels.registry import get_channel
from payments import services, tasks
from payments.models import Order
from payments_site.telemetry import REDACTED, before_send, sentry_options
from tests.conftest import Actor


class CapturingTransport(Transport):
    def __init__(self, options: dict | None = None) -> None:
        super().__init__(options)
        self.events: list[dict] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        for item in envelope.items:
            if item.type == "event":
                assert item.payload.json is not None
                self.events.append(item.payload.json)


@pytest.fixture
def sentry_events() -> Iterator[list[dict]]:
    transport = CapturingTransport()
    options = {**sentry_options(), "dsn": "http://public@127.0.0.1:9/1", "transport": transport}
    sentry_sdk.init(**options)
    try:
        yield transport.events
    finally:
        # Back to no client, as without SENTRY_DSN: later tests send nothing anywhere.
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


@pytest.fixture
def unreachable_channel(settings) -> Iterator[None]:
    settings.SANDBOX_API_BASE = "http://127.0.0.1:9"  # nothing listens: every call is a connect failure
    settings.CHANNEL_CONNECT_TIMEOUT_S = 1
    get_channel.cache_clear()
    yield
    get_channel.cache_clear()


def test_an_exhausted_charge_is_one_event_with_the_order_and_no_secret(
    sentry_events: list[dict], unreachable_channel: None, merchant_a: Actor, settings
) -> None:
    order, _ = services.order_create(
        merchant=merchant_a.merchant, merchant_order_no="SENTRY-1", amount=1000, currency="CNY", channel="sandbox",
    )
    # Run the charge as a worker would, retries included (eagerly, so without the backoff waits).
    tasks.charge_order.apply(args=(order.pk,))
    order.refresh_from_db()
    assert order.attention.startswith("charge_order_exhausted")

    assert len(sentry_events) == 1
    event = sentry_events[0]
    assert event["level"] == "error"
    assert event["tags"]["order_id"] == order.public_id
    assert order.public_id in event["logentry"]["formatted"]
    assert re.fullmatch(r"[0-9a-f]{32}", event["tags"]["trace_id"])  # ours, to search the logs with
    assert event["environment"] == settings.SENTRY_ENVIRONMENT
    sent = json.dumps(event)
    for secret in (settings.SANDBOX_SECRET, merchant_a.secret_key, merchant_a.merchant.webhook_secret):
        assert secret not in sent


def test_before_send_scrubs_keys_signatures_authorization_and_notification_bodies() -> None:
    event = {
        "message": "failed with Bearer sk_test_abcdef123 and whsec_c2VjcmV0",
        "request": {
            "url": "http://127.0.0.1/callbacks/alipay",
            "headers": {"Authorization": "Bearer sk_test_abc", "X-Sandbox-Signature": "deadbeef",
                        "Wechatpay-Signature": "c2ln", "Content-Type": "application/json"},
            "data": "notify_id=1&sign=abc&total_amount=10.00",
            "query_string": "sign=abc",
        },
        "exception": {"values": [{"stacktrace": {"frames": [{"function": "notification_receive", "vars": {
            "body": "b'{\"trade\": 1}'", "text": "{\"trade\": 1}", "secret": "s3cr3t", "app_private_key": "k",
            "channel": "alipay", "headers": {"Wechatpay-Signature": "c2ln", "Accept": "*/*"},
        }}]}}]},
        "extra": {"api_key": "sk_live_xyz", "order_id": "ord_1"},
    }
    cleaned = before_send(event, {})
    assert cleaned is not None
    sent = json.dumps(cleaned)
    for secret in ("sk_test_abc", "sk_live_xyz", "whsec_c2VjcmV0", "deadbeef", "c2ln", "s3cr3t", "sign=abc",
                   "trade"):
        assert secret not in sent
    headers = cleaned["request"]["headers"]
    assert headers["Authorization"] == REDACTED and headers["Content-Type"] == "application/json"
    frame_vars = cleaned["exception"]["values"][0]["stacktrace"]["frames"][0]["vars"]
    assert frame_vars["channel"] == "alipay" and frame_vars["headers"]["Accept"] == "*/*"
    assert cleaned["extra"]["order_id"] == "ord_1"


def test_sentry_is_off_without_a_dsn(settings) -> None:
    assert settings.SENTRY_DSN == "" or pytest.skip("SENTRY_DSN is set in this environment")
    assert not sentry_sdk.get_client().is_active()


def test_beat_tasks_are_monitored() -> None:
    celery_integration = next(i for i in sentry_options()["integrations"] if i.identifier == "celery")
    assert celery_integration.monitor_beat_tasks


def test_orders_are_untouched_by_a_closed_client(merchant_a: Actor) -> None:
    # After the capturing client above is closed, errors are not sent and nothing breaks.
    order, _ = services.order_create(
        merchant=merchant_a.merchant, merchant_order_no="SENTRY-2", amount=1000, currency="CNY", channel="sandbox",
    )
    assert Order.objects.filter(pk=order.pk).exists()
