"""Security (issue 12): merchant isolation on every endpoint, refused credentials, secrets kept out of logs, errors
and answers, replayed channel callbacks, admin actions without their permission, oversized bodies.

Replays: the sandbox and WeChat Pay sign a timestamp with each notification and refuse one outside their tolerance
(``stale_timestamp``, 5 minutes for both); inside it, a replay is deduplicated by the notification's id (one
stored row, one transition). Alipay's notifications carry no timestamp: a replay of a captured one verifies
whenever it is sent, so it is made harmless by its ``notify_id`` alone (the unique
``(channel, channel_notification_id)``): stored once, applied once, and a copy changes nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from channels.alipay import signing as alipay_signing
from channels.base import ChannelError
from channels.breaker import SharedBreaker
from channels.management.commands.generate_dev_keys import write_rsa_pair
from channels.sandbox import signing as sandbox_signing
from channels.wechatpay import signing as wechatpay_signing
from payments import services
from payments.api.auth import forget_keys
from payments.models import ChannelNotification, Event, Merchant, Order, TransitionLog, WebhookDelivery
from tests.admin_support import pay_at_channel, pending_order, sandbox, staff_groups, staff_user
from tests.conftest import Actor, make_actor
from tests.e2e.conftest import channel_settings
from tests.test_sentry import sentry_events
from tests.webhook_receiver import running_receiver

__all__ = ["sandbox", "sentry_events"]  # fixtures, for the tests below

API = "/api/v1"
BODY = {"merchant_order_no": "S-1", "amount": 1000, "currency": "CNY", "channel": "sandbox"}
WECHATPAY_MCHID, WECHATPAY_APPID = "1900000001", "wxd930ea5d5a258f4f"
WECHATPAY_KEY_ID = "PUB_KEY_ID_0100000000000000000000000001"
ALIPAY_APP_ID = "2021000000000001"


def bearer(secret_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret_key}")
    return client


def load_private(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="module")
def keyed_channels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """WeChat Pay and Alipay configured with key files made for this module, their gateways unreachable (the
    discard port): enough to sign requests and to verify notifications. Returns the channels' own private keys."""
    keys = tmp_path_factory.mktemp("keys")
    wechat_merchant, _ = write_rsa_pair(keys, "wechatpay_merchant")
    wechat_platform, wechat_platform_public = write_rsa_pair(keys, "wechatpay_platform")
    alipay_app, _ = write_rsa_pair(keys, "alipay_app")
    alipay_gateway, alipay_gateway_public = write_rsa_pair(keys, "alipay_gateway")
    overrides = {
        "WECHATPAY_API_BASE": "http://127.0.0.1:9", "WECHATPAY_MCHID": WECHATPAY_MCHID,
        "WECHATPAY_APPID": WECHATPAY_APPID, "WECHATPAY_MERCHANT_PRIVATE_KEY_PATH": str(wechat_merchant),
        "WECHATPAY_MERCHANT_SERIAL_NO": "AB" * 20, "WECHATPAY_APIV3_KEY": "0123456789abcdefghijklmnopqrstuv",
        "WECHATPAY_PLATFORM_PUBLIC_KEY_PATH": str(wechat_platform_public),
        "WECHATPAY_PLATFORM_PUBLIC_KEY_ID": WECHATPAY_KEY_ID,
        "ALIPAY_GATEWAY_URL": "http://127.0.0.1:9/gateway.do", "ALIPAY_APP_ID": ALIPAY_APP_ID,
        "ALIPAY_APP_PRIVATE_KEY_PATH": str(alipay_app), "ALIPAY_PUBLIC_KEY_PATH": str(alipay_gateway_public),
        "CHANNEL_CONNECT_TIMEOUT_S": 1,
    }
    with channel_settings(overrides):
        yield {"wechatpay_platform": load_private(wechat_platform), "alipay": load_private(alipay_gateway)}


# -- isolation -------------------------------------------------------------------------------------------


@pytest.fixture
def objects_of_a(merchant_a: Actor, paid_order) -> dict[str, str]:
    order = paid_order(merchant_a)
    refund, _ = services.refund_request(order_id=order.pk, merchant_refund_no="R-1", amount=100)
    event = order.events.get()
    return {"order": order.public_id, "refund": refund.public_id, "event": event.public_id}


def state_of(merchant: Merchant) -> tuple:
    merchant.refresh_from_db()
    orders = [(o.public_id, o.status, o.amount_refunded) for o in merchant.orders.order_by("id")]
    refunds = list(merchant.orders.values_list("refunds__public_id", "refunds__status").order_by("refunds__id"))
    deliveries = WebhookDelivery.objects.filter(event__merchant=merchant).count()
    return orders, refunds, deliveries, merchant.webhook_secret, merchant.previous_webhook_secret


@pytest.mark.parametrize("method, path", [
    ("get", "/orders/{order}"),
    ("post", "/orders/{order}/close"),
    ("post", "/orders/{order}/refunds"),
    ("get", "/orders/{order}/refunds"),
    ("get", "/refunds/{refund}"),
    ("get", "/events/{event}"),
    ("post", "/events/{event}/redeliver"),
    ("get", "/orders"),
    ("get", "/events"),
    ("post", "/webhook_secret/rotate"),
])
def test_another_merchants_ids_are_404_and_nothing_changes(
    objects_of_a, merchant_a: Actor, client_b, merchant_b: Actor, assert_api_error, method: str, path: str
) -> None:
    before = state_of(merchant_a.merchant)
    url = API + path.format(**objects_of_a)
    body = {"merchant_refund_no": "R-2", "amount": 100} if path.endswith("/refunds") else None
    response = getattr(client_b, method)(url, body, format="json")

    if "{" in path:  # one of A's objects, by its id
        assert_api_error(response, 404, "invalid_request_error", "not_found")
    elif method == "get":  # a list: none of A's objects in it
        assert response.status_code == 200 and response.json()["data"] == []
        for name in ("order", "event"):
            assert_api_error(client_b.get(url, {"starting_after": objects_of_a[name]}), 400,
                             "invalid_request_error", "parameter_invalid", "starting_after")
            break
    else:  # rotate: the caller's secret, not A's
        assert response.status_code == 200
        merchant_b.merchant.refresh_from_db()
        assert response.json()["webhook_secret"] == merchant_b.merchant.webhook_secret
    assert state_of(merchant_a.merchant) == before
    assert not any(o for o in objects_of_a.values() if o in response.content.decode())


ENDPOINTS = [("get", "/orders"), ("post", "/orders"), ("get", "/orders/ord_x"), ("post", "/orders/ord_x/close"),
             ("post", "/orders/ord_x/refunds"), ("get", "/refunds/rfd_x"), ("get", "/events"),
             ("post", "/events/evt_x/redeliver"), ("post", "/webhook_secret/rotate")]


@pytest.mark.parametrize("refusal", ["revoked", "deactivated"])
def test_revoked_keys_and_deactivated_merchants_are_401_everywhere(merchant_a: Actor, assert_api_error,
                                                                   refusal: str) -> None:
    client = merchant_a.client()
    assert client.get(f"{API}/orders").status_code == 200  # the key is now in this process's 5 s cache
    if refusal == "revoked":
        new_key = services.api_key_rotate(merchant=merchant_a.merchant)
    else:
        Merchant.objects.filter(pk=merchant_a.merchant.pk).update(is_active=False)
    forget_keys()  # as another process would be once the cache's TTL has passed (test_api_auth tests the TTL)
    secret_before = Merchant.objects.get(pk=merchant_a.merchant.pk).webhook_secret
    for method, path in ENDPOINTS:
        response = getattr(client, method)(API + path, BODY if path == "/orders" else None, format="json")
        assert_api_error(response, 401, "authentication_error", "authentication_failed")
    assert not merchant_a.merchant.orders.exists()
    assert Merchant.objects.get(pk=merchant_a.merchant.pk).webhook_secret == secret_before
    if refusal == "revoked":
        assert bearer(new_key).get(f"{API}/orders").status_code == 200


# -- secrets ---------------------------------------------------------------------------------------------


def configured_private_keys() -> list[str]:
    paths = [getattr(settings, name) for name in dir(settings) if name.endswith("PRIVATE_KEY_PATH")]
    return [Path(path).read_text() for path in paths if path]


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, secret in secrets.items() if secret and secret in text]


def pem_lines(pem: str) -> list[str]:
    """A PEM's base64 lines (a leak of any one of them is a leak of the key)."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def test_secrets_never_appear_in_logs_errors_or_answers(
    db, sandbox, keyed_channels, caplog, sentry_events: list[dict], settings
) -> None:
    """A merchant's whole life with every record logged at DEBUG: create, charge at the channel, pay, refund, key
    and webhook secret rotation, a webhook sent to a local receiver, requests that fail with an Authorization
    header, charges signed with the WeChat Pay and Alipay private keys, a notification that cannot be applied (an
    ERROR, so a Sentry event). The rotate endpoint's own answer is the one place the new webhook secret appears,
    by design (API.md): it is left out of the answers checked."""
    for name in ("", "httpx", "httpcore", "django", "django.db.backends", "payments", "channels", "celery"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.0/8"]
    settings.WEBHOOK_RETRY_SCHEDULE_S = [0, 0]
    actor = make_actor("Secretive")
    actor.merchant.rate_limit_per_s = 10_000
    actor.merchant.save(update_fields=["rate_limit_per_s"])
    answers: list[Any] = []
    secrets = {"sandbox secret": settings.SANDBOX_SECRET, "apiv3 key": settings.WECHATPAY_APIV3_KEY,
               "secret key": actor.secret_key, "authorization": f"Bearer {actor.secret_key}",
               "webhook secret": actor.merchant.webhook_secret}
    for i, pem in enumerate(configured_private_keys()):
        secrets[f"private key {i}"] = pem
        secrets.update({f"private key {i} line {n}": line for n, line in enumerate(pem_lines(pem)[1:-1])})
    assert sum(name.startswith("private key") for name in secrets) > 2  # WeChat Pay's and Alipay's at least

    with running_receiver() as receiver:
        actor.merchant.default_notify_url = receiver.url("/hooks")
        actor.merchant.save(update_fields=["default_notify_url"])
        client = actor.client()
        created = client.post(f"{API}/orders", BODY, format="json", HTTP_IDEMPOTENCY_KEY="s-1")
        answers.append(created)
        order = Order.objects.get(public_id=created.json()["id"])
        services.order_charge(order_id=order.pk)  # to the simulator, signed with the sandbox secret
        order.refresh_from_db()
        pay_at_channel(order)
        services.order_query(order_id=order.pk)
        answers.append(refund := client.post(f"{API}/orders/{order.public_id}/refunds",
                                             {"merchant_refund_no": "R-1", "amount": 300}, format="json"))
        services.refund_submit(refund_id=order.refunds.get(public_id=refund.json()["id"]).pk)

        new_key = services.api_key_rotate(merchant=actor.merchant)
        secrets.update({"new secret key": new_key, "new authorization": f"Bearer {new_key}"})
        client = bearer(new_key)
        rotated = client.post(f"{API}/webhook_secret/rotate")  # its answer is the new secret, once, by design
        secrets["new webhook secret"] = rotated.json()["webhook_secret"]
        for delivery in WebhookDelivery.objects.filter(event__merchant=actor.merchant):
            services.webhook_deliver(delivery_id=delivery.pk)  # signed with both secrets (the grace period)
        assert receiver.received

        # Failures, each with an Authorization header: a revoked key, a wrong one, a missing object, a bad body.
        answers.append(bearer(actor.secret_key).get(f"{API}/orders"))
        answers.append(bearer(actor.secret_key + "x").post(f"{API}/orders", BODY, format="json"))
        answers.append(client.get(f"{API}/orders/ord_doesnotexist"))
        answers.append(client.post(f"{API}/orders", {**BODY, "amount": -1}, format="json"))
        answers.append(client.post(f"{API}/orders/{order.public_id}/close"))  # a paid order: 409
        answers += [client.get(f"{API}/orders/{order.public_id}"), client.get(f"{API}/events"),
                    client.get(f"{API}/orders/{order.public_id}/refunds")]
        event = actor.merchant.events.order_by("id").first()
        assert event is not None
        answers.append(client.get(f"{API}/events/{event.public_id}"))

        # Channel calls signed with the WeChat Pay and Alipay private keys, to a gateway that is not there.
        for channel in ("wechatpay", "alipay"):
            answers.append(other := client.post(f"{API}/orders", {**BODY, "merchant_order_no": f"S-{channel}",
                                                                   "channel": channel}, format="json"))
            with pytest.raises(ChannelError):
                services.order_charge(order_id=Order.objects.get(public_id=other.json()["id"]).pk)

        # A verified notification about no order of ours: applying it logs an ERROR (a Sentry event).
        headers, body = sandbox_notification("ord_unknown", "sbx_n_unknown")
        answers.append(callback := Client().post("/callbacks/sandbox", body, content_type="application/json",
                                                 headers=headers))
        assert callback.status_code == 200
        services.notification_apply(notification_id=ChannelNotification.objects.get(
            channel_notification_id="sbx_n_unknown").pk)

    assert order.refunds.get().status == "succeeded"
    assert len(answers) > 10 and all(a.status_code < 500 for a in answers)
    formatter = next(h for h in logging.getLogger().handlers if h.get_name() == "stdout").formatter
    assert formatter is not None
    records = caplog.records
    assert len(records) > 20
    for record in records:
        for text in (record.getMessage(), formatter.format(record), repr(record.args), repr(record.__dict__)):
            assert not leaks(text, secrets), (leaks(text, secrets), record.name, record.getMessage())
    for answer in answers:
        text = answer.content.decode() + repr(sorted(answer.items()))
        assert not leaks(text, secrets), (leaks(text, secrets), answer.request["PATH_INFO"])
    for received in receiver.received:
        text = received.body.decode() + repr(received.headers)
        assert not leaks(text, secrets), leaks(text, secrets)
    assert sentry_events  # the ERROR above, at least
    sent = json.dumps(sentry_events)
    assert not leaks(sent, secrets), leaks(sent, secrets)


# -- replayed channel notifications ----------------------------------------------------------------------


def sandbox_notification(out_trade_no: str, notification_id: str, *, amount: int = 1050,
                         age_s: int = 0) -> tuple[dict[str, str], bytes]:
    body = json.dumps({
        "id": notification_id, "type": "trade.succeeded", "created_at": "2026-11-27T00:00:00Z",
        "data": {"out_trade_no": out_trade_no, "status": "SUCCEEDED", "amount": amount, "currency": "CNY",
                 "trade_no": "sbx_t_1", "paid_at": "2026-11-27T00:00:00Z"},
    }).encode()
    timestamp = str(int(time.time()) - age_s)
    return {sandbox_signing.TIMESTAMP_HEADER: timestamp,
            sandbox_signing.SIGNATURE_HEADER: sandbox_signing.sign_message(settings.SANDBOX_SECRET, timestamp,
                                                                           body)}, body


def wechatpay_notification(keys: dict[str, Any], order: Order, *, age_s: int = 0) -> tuple[dict[str, str], bytes]:
    resource = {
        "mchid": WECHATPAY_MCHID, "appid": WECHATPAY_APPID, "out_trade_no": order.public_id,
        "transaction_id": "4200000000001", "trade_type": "NATIVE", "trade_state": "SUCCESS",
        "success_time": "2026-11-27T10:00:00+08:00", "payer": {"openid": "o1"},
        "amount": {"total": order.amount, "payer_total": order.amount, "currency": "CNY", "payer_currency": "CNY"},
    }
    sealed = wechatpay_signing.encrypt(settings.WECHATPAY_APIV3_KEY, json.dumps(resource).encode(), "transaction")
    body = json.dumps({
        "id": "EV-2018022511223320873", "create_time": "2026-11-27T10:00:00+08:00",
        "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS", "summary": "支付成功",
        "resource": {"original_type": "transaction", **sealed},
    }).encode()
    headers = wechatpay_signing.signed_headers(keys["wechatpay_platform"], WECHATPAY_KEY_ID, body,
                                               timestamp=str(int(time.time()) - age_s))
    return headers, body


def alipay_notification(keys: dict[str, Any], order: Order) -> tuple[dict[str, str], bytes]:
    params = {
        "notify_time": "2026-11-27 10:00:00", "notify_type": "trade_status_sync", "notify_id": "ac05099524730693a8",
        "app_id": ALIPAY_APP_ID, "charset": "utf-8", "version": "1.0", "trade_no": "2026112722001",
        "out_trade_no": order.public_id, "trade_status": "TRADE_SUCCESS", "total_amount": f"{order.amount / 100:.2f}",
        "gmt_payment": "2026-11-27 10:00:00",
    }
    content = alipay_signing.canonical(params, exclude=alipay_signing.NOTIFICATION_UNSIGNED)
    params.update(sign=alipay_signing.sign(keys["alipay"], content), sign_type="RSA2")
    return {"Content-Type": "application/x-www-form-urlencoded"}, urlencode(params).encode()


def post_callback(channel: str, headers: dict[str, str], body: bytes):
    content_type = headers.get("Content-Type", "application/json")
    return Client().post(f"/callbacks/{channel}", body, content_type=content_type,
                         headers={k: v for k, v in headers.items() if k != "Content-Type"})


def apply_received() -> None:
    for row in ChannelNotification.objects.filter(state="received"):
        services.notification_apply(notification_id=row.pk)


@pytest.mark.parametrize("channel", ["sandbox", "wechatpay", "alipay"])
def test_replayed_notifications_change_nothing(keyed_channels, merchant_a: Actor, channel: str) -> None:
    order, _ = services.order_create(merchant=merchant_a.merchant, merchant_order_no="N-1", amount=1050,
                                     currency="CNY", channel=channel)
    if channel == "sandbox":
        def notification(age_s: int = 0) -> tuple[dict[str, str], bytes]:
            return sandbox_notification(order.public_id, "sbx_n_replayed", age_s=age_s)
    elif channel == "wechatpay":
        def notification(age_s: int = 0) -> tuple[dict[str, str], bytes]:
            return wechatpay_notification(keyed_channels, order, age_s=age_s)
    else:
        def notification(age_s: int = 0) -> tuple[dict[str, str], bytes]:
            return alipay_notification(keyed_channels, order)

    if channel != "alipay":
        # Signed correctly, but outside the tolerance (5 minutes): refused, stored as rejected, nothing applied.
        stale = post_callback(channel, *notification(age_s=301))
        assert stale.status_code == 400
        row = ChannelNotification.objects.get(channel=channel)
        assert (row.state, row.reason) == ("rejected", "stale_timestamp")
        order.refresh_from_db()
        assert order.status == "created"
        row.delete()

    first = post_callback(channel, *notification())
    assert first.status_code in (200, 204), first.content
    apply_received()
    order.refresh_from_db()
    assert order.status == "succeeded"
    log = list(TransitionLog.objects.filter(object_id=order.public_id).values_list("transition", flat=True))
    events = Event.objects.filter(order=order).count()

    for _ in range(2):  # the same notification again, inside the tolerance: deduplicated by its id
        again = post_callback(channel, *notification(age_s=5))
        assert again.status_code == first.status_code and again.content == first.content
        apply_received()
    assert ChannelNotification.objects.filter(channel=channel).count() == 1
    assert list(TransitionLog.objects.filter(object_id=order.public_id).values_list("transition", flat=True)) == log
    assert Event.objects.filter(order=order).count() == events


# -- admin permissions -----------------------------------------------------------------------------------


ORDER_ACTIONS = ["requery", "close", "retry_charge", "refund", "accept_late_payment", "refund_late_payment"]


@pytest.mark.parametrize("group", ["support", "finance"])
def test_admin_actions_are_refused_without_their_permission(
    sandbox, merchant_a: Actor, sandbox_breaker: SharedBreaker, group: str
) -> None:
    staff_groups()
    merchant_a.merchant.default_notify_url = "https://merchant.example/hooks"
    merchant_a.merchant.save(update_fields=["default_notify_url"])
    order = pending_order(merchant_a.merchant, "ADM-1")
    event = order.events.get()
    client = Client()
    client.force_login(staff_user("sam", group))
    changelist = reverse("admin:payments_order_changelist")
    events = reverse("admin:payments_event_changelist")
    before = (Order.objects.get(pk=order.pk).status, event.deliveries.count(), sandbox_breaker.status()["mode"])

    page = client.get(changelist)
    assert page.status_code == 200
    assert not set(ORDER_ACTIONS) & set(page.content.decode().split('"'))  # not offered
    for action in ORDER_ACTIONS:
        answer = client.post(changelist, {"action": action, "_selected_action": [order.pk], "apply": "1",
                                          "amount": "1.00", "index": "0"})
        assert answer.status_code in (200, 302, 403)
    client.post(events, {"action": "redeliver", "_selected_action": [event.pk]})
    assert client.post("/admin/breakers/", {"key": sandbox_breaker.key, "mode": "force_open"}).status_code == 403

    assert (Order.objects.get(pk=order.pk).status, event.deliveries.count(),
            sandbox_breaker.status()["mode"]) == before
    assert not TransitionLog.objects.filter(source="admin").exists()
    assert sandbox.trade(order.public_id)["status"] == "WAITING"  # nothing reached the channel either
    assert not order.refunds.exists()
    assert User.objects.get(username="sam").groups.get().name == group


# -- body size (the full set is in test_api_bad_input) ----------------------------------------------------


def test_a_body_over_the_limit_is_413_and_creates_nothing(client_a, merchant_a: Actor, assert_api_error,
                                                          settings) -> None:
    body = json.dumps({**BODY, "description": "x" * settings.API_MAX_BODY_BYTES})
    response = client_a.post(f"{API}/orders", body, content_type="application/json")
    assert_api_error(response, 413, "invalid_request_error", "request_too_large")
    assert not merchant_a.merchant.orders.exists()
