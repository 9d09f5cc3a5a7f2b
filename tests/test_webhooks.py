"""Merchant webhooks without a worker: URL safety (at create and at send), the delivery rows and attempts, the
events API, secret rotation. A real HTTP receiver on loopback; DNS is patched at the network edge only."""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from standardwebhooks import Webhook

from payments import services, webhook_http
from payments.metrics import StateCollector
from payments.models import Event, Merchant, WebhookAttempt, WebhookDelivery
from payments.services.webhooks import signing_secrets
from tests.conftest import Actor, make_actor
from tests.webhook_receiver import Receiver, running_receiver

LOOPBACK = ["localhost", "127.0.0.0/8", "::1"]
PUBLIC = "93.184.216.34"


@pytest.fixture
def receiver(settings) -> Iterator[Receiver]:
    settings.WEBHOOK_ALLOWED_HOSTS = LOOPBACK
    settings.WEBHOOK_RETRY_SCHEDULE_S = [0, 0]
    with running_receiver() as running:
        yield running


@pytest.fixture
def dns(monkeypatch) -> dict[str, str]:
    """Names the tests make up, resolved as the test says (the network edge: getaddrinfo)."""
    answers: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


@pytest.mark.parametrize("url", [
    "http://10.0.0.1/hooks", "https://169.254.169.254/latest/meta-data", "http://localhost:8000/hooks",
    "http://127.0.0.1/hooks", "http://[::1]/hooks", "http://[::ffff:10.0.0.1]/hooks", "http://0.0.0.0/hooks",
    "http://224.0.0.1/hooks", "http://internal.example/hooks", "http://metadata.example/hooks",
    "ftp://merchant.example/hooks", "http://user:pw@merchant.example/hooks",
])
def test_unsafe_webhook_urls_are_refused(url: str, dns: dict[str, str], settings) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = []
    dns.update({"internal.example": "10.1.2.3", "metadata.example": "169.254.169.254"})
    with pytest.raises(webhook_http.UnsafeUrl):
        webhook_http.check_url(url, live=False)


def test_safe_and_allow_listed_urls_pass(dns: dict[str, str], settings) -> None:
    dns["shop.example"] = PUBLIC
    webhook_http.check_url("https://shop.example/hooks", live=True)
    webhook_http.check_url("http://shop.example/hooks", live=False)
    webhook_http.check_url("https://unresolvable.invalid/hooks", live=True)  # checked again when sending
    with pytest.raises(webhook_http.UnsafeUrl, match="https"):
        webhook_http.check_url("http://shop.example/hooks", live=True)
    settings.WEBHOOK_ALLOWED_HOSTS = LOOPBACK
    webhook_http.check_url("http://localhost:9000/hooks", live=False)
    webhook_http.check_url("http://127.0.0.1:9000/hooks", live=False)


@pytest.mark.parametrize("url", ["http://10.0.0.1/hooks", "http://169.254.169.254/", "http://localhost/hooks",
                                 "http://internal.example/hooks"])
def test_create_refuses_an_unsafe_notify_url_with_400(client_a, assert_api_error, dns, url: str, settings) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = []
    dns["internal.example"] = "10.9.9.9"
    response = client_a.post("/api/v1/orders", {"merchant_order_no": "SSRF-1", "amount": 100, "currency": "CNY",
                                                "channel": "sandbox", "notify_url": url}, format="json")
    assert_api_error(response, 400, "invalid_request_error", "invalid_request", "notify_url")


def test_live_keys_need_https(db, assert_api_error, dns) -> None:
    merchant, key = services.merchant_create(name="Live merchant", live=True)
    client = Actor(merchant, key).client()
    dns["shop.example"] = PUBLIC
    body = {"merchant_order_no": "LIVE-1", "amount": 100, "currency": "CNY", "channel": "sandbox"}
    refused = client.post("/api/v1/orders", {**body, "notify_url": "http://shop.example/h"}, format="json")
    assert_api_error(refused, 400, "invalid_request_error", "invalid_request", "notify_url")
    assert client.post("/api/v1/orders", {**body, "notify_url": "https://shop.example/h"}, format="json"
                       ).status_code == 201


def order_with_event(actor: Actor, url: str, number: str = "WH-U1") -> Event:
    """An order that became pending through the real services, so that its event and delivery exist."""
    from channels.base import TradeResult, TradeStatus

    order, _ = services.order_create(merchant=actor.merchant, merchant_order_no=number, amount=1000, currency="CNY",
                                     channel="sandbox", notify_url=url)
    services.order_apply_trade(order_id=order.pk, source="worker", trade=TradeResult(
        out_trade_no=order.public_id, status=TradeStatus.WAITING, pay_url="https://pay.example/qr"))
    return Event.objects.get(order=order, type="order.pending")


def test_a_host_that_re_resolves_to_a_private_address_is_refused_when_sending(db, dns, settings) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = []
    dns["rebinding.example"] = PUBLIC
    event = order_with_event(make_actor("Rebinding merchant"), "http://rebinding.example/hooks")
    dns["rebinding.example"] = "10.0.0.7"  # the name now points inside
    delivery = WebhookDelivery.objects.get(event=event)
    attempt = services.webhook_deliver(delivery_id=delivery.pk)
    assert attempt is not None and attempt.http_status is None
    assert attempt.error.startswith("refused:") and "10.0.0.7" in attempt.error
    delivery.refresh_from_db()
    assert delivery.state == "pending" and delivery.attempts == 1  # retried on schedule, never sent inside


def test_an_attempt_is_recorded_and_a_second_run_of_the_task_does_nothing(receiver: Receiver, db) -> None:
    actor = make_actor("Rows merchant")
    receiver.script["/h"] = [500]
    event = order_with_event(actor, receiver.url("/h"))
    delivery = WebhookDelivery.objects.get(event=event)
    first = services.webhook_deliver(delivery_id=delivery.pk)
    assert first is not None and (first.number, first.http_status, first.error) == (1, 500, "HTTP 500")
    assert first.latency_ms >= 0
    second = services.webhook_deliver(delivery_id=delivery.pk)  # due again at once (schedule 0 s): retried
    assert second is not None and (second.number, second.http_status) == (2, 200)
    assert services.webhook_deliver(delivery_id=delivery.pk) is None  # delivered: a repeat sends nothing
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 2, 200)
    assert len(receiver.at("/h")) == 2
    assert {r.headers["webhook-id"] for r in receiver.at("/h")} == {event.public_id}


def test_sends_to_one_endpoint_share_a_connection_unless_it_answers_at_length(db, settings) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = LOOPBACK
    actor = make_actor("Keep-alive merchant")
    with running_receiver(keep_alive=True) as receiver:
        events = [order_with_event(actor, receiver.url("/h"), number=f"WH-K{n}") for n in range(3)]
        for event in events:
            attempt = services.webhook_deliver(delivery_id=WebhookDelivery.objects.get(event=event).pk)
            assert attempt is not None and attempt.http_status == 200
        # Read to its end, each answer leaves the connection for the next send: no new TCP (or TLS) handshake.
        assert (len(receiver.at("/h")), receiver.connections) == (3, 1)
        # An answer longer than what is read is not read on: delivered all the same, its connection dropped, so
        # each next send connects again.
        receiver.bodies["/big"] = b"x" * (webhook_http.KEEP_BODY_BYTES * 4)
        for number, url in (("WH-B1", "/big"), ("WH-B2", "/big"), ("WH-K3", "/h")):
            event = order_with_event(actor, receiver.url(url), number=number)
            attempt = services.webhook_deliver(delivery_id=WebhookDelivery.objects.get(event=event).pk)
            assert attempt is not None and attempt.http_status == 200
        assert receiver.connections == 3


def test_a_kept_connection_the_receiver_closed_meanwhile_is_not_used(db, settings) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = LOOPBACK
    actor = make_actor("Idle merchant")
    with running_receiver(keep_alive=True, idle_s=0.2) as receiver:
        for number in ("WH-I1", "WH-I2"):
            event = order_with_event(actor, receiver.url("/h"), number=number)
            attempt = services.webhook_deliver(delivery_id=WebhookDelivery.objects.get(event=event).pk)
            assert attempt is not None and (attempt.http_status, attempt.error) == (200, "")
            time.sleep(0.5)  # the receiver closes the idle connection: the next send connects again
        assert (len(receiver.at("/h")), receiver.connections) == (2, 2)


def test_an_https_endpoint_is_reached_at_the_checked_address_and_verified_against_its_name(db, dns, settings,
                                                                                            test_ca) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = LOOPBACK
    dns["shop.example"] = dns["elsewhere.example"] = "127.0.0.1"
    actor = make_actor("TLS merchant")
    with running_receiver(keep_alive=True, tls=test_ca.server_context("shop.example")) as receiver:
        port = receiver.server.server_address[1] if receiver.server else 0
        for number, name in (("WH-T1", "shop.example"), ("WH-T2", "shop.example")):
            event = order_with_event(actor, f"https://{name}:{port}/h", number=number)
            attempt = services.webhook_deliver(delivery_id=WebhookDelivery.objects.get(event=event).pk)
            assert attempt is not None and (attempt.http_status, attempt.error) == (200, "")
        # The name travels as the Host header and as the TLS server name; the second send kept the connection.
        assert [r.headers["Host"] for r in receiver.at("/h")] == [f"shop.example:{port}"] * 2
        assert receiver.connections == 1
        # The same address under a name its certificate is not for: the certificate is checked against the name,
        # not the address, so nothing is sent.
        event = order_with_event(actor, f"https://elsewhere.example:{port}/h", number="WH-T3")
        attempt = services.webhook_deliver(delivery_id=WebhookDelivery.objects.get(event=event).pk)
        assert attempt is not None and attempt.http_status is None
        assert attempt.error.startswith("SSLCertVerificationError") and "elsewhere.example" in attempt.error
        assert len(receiver.at("/h")) == 2


def test_after_the_last_attempt_the_delivery_is_failed_and_stays_visible(receiver: Receiver, db) -> None:
    receiver.script["/down"] = [500, 500, 500]
    event = order_with_event(make_actor("Failing merchant"), receiver.url("/down"))
    delivery = WebhookDelivery.objects.get(event=event)
    for _ in range(3):
        services.webhook_deliver(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.next_attempt_at) == ("failed", 3, None)
    assert services.webhook_deliver(delivery_id=delivery.pk) is None
    assert WebhookAttempt.objects.filter(delivery=delivery).count() == 3


def test_a_claimed_attempt_whose_worker_died_is_due_again_after_its_lease(receiver: Receiver, db, settings) -> None:
    event = order_with_event(make_actor("Lease merchant"), receiver.url("/lease"))
    delivery = WebhookDelivery.objects.get(event=event)
    # A worker claimed the attempt and died before recording it: the row says attempt 1 is under way.
    WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=1, next_attempt_at=timezone.now()
                                                          + dt.timedelta(seconds=40))
    assert services.webhook_deliver(delivery_id=delivery.pk) is None  # not yet: it may still be running
    from payments import selectors

    assert delivery.pk not in selectors.webhooks_due(now=timezone.now())
    assert delivery.pk in selectors.webhooks_due(now=timezone.now() + dt.timedelta(seconds=41))


def test_rotation_signs_with_both_secrets_during_the_grace_period_only(receiver: Receiver, client_a, merchant_a,
                                                                      settings) -> None:
    old = Merchant.objects.get(pk=merchant_a.merchant.pk).webhook_secret
    rotated = client_a.post("/api/v1/webhook_secret/rotate")
    assert rotated.status_code == 200 and set(rotated.json()) == {"webhook_secret"}
    new = rotated.json()["webhook_secret"]
    event = order_with_event(merchant_a, receiver.url("/rot"))
    services.webhook_deliver(delivery_id=WebhookDelivery.objects.get(event=event).pk)
    received = receiver.at("/rot")[0]
    assert Webhook(old).verify(received.body, received.headers)["id"] == event.public_id
    assert Webhook(new).verify(received.body, received.headers)["id"] == event.public_id

    merchant = Merchant.objects.get(pk=merchant_a.merchant.pk)
    later = timezone.now() + dt.timedelta(seconds=settings.WEBHOOK_SECRET_GRACE_S + 1)
    assert signing_secrets(merchant, now=later) == [new]


def test_the_events_api_shows_deliveries_and_redelivers(receiver: Receiver, client_a, client_b, merchant_a,
                                                        assert_api_error) -> None:
    event = order_with_event(merchant_a, receiver.url("/api"))
    shown = client_a.get(f"/api/v1/events/{event.public_id}")
    assert shown.status_code == 200
    body = shown.json()
    assert (body["id"], body["type"], body["data"]["object"]["status"]) == (event.public_id, "order.pending",
                                                                             "pending")
    assert [(d["endpoint"], d["state"], d["attempts"]) for d in body["deliveries"]] == [
        (receiver.url("/api"), "pending", 0)]
    again = client_a.post(f"/api/v1/events/{event.public_id}/redeliver")
    assert again.status_code == 202 and len(again.json()["deliveries"]) == 2
    for response in (client_b.get(f"/api/v1/events/{event.public_id}"),
                     client_b.post(f"/api/v1/events/{event.public_id}/redeliver")):
        assert_api_error(response, 404, "invalid_request_error", "not_found")
    assert WebhookDelivery.objects.filter(event=event).count() == 2


def test_an_event_without_an_endpoint_has_no_delivery_and_cannot_be_redelivered(merchant_a, client_a,
                                                                                 assert_api_error) -> None:
    event = order_with_event(merchant_a, "")
    assert not WebhookDelivery.objects.filter(event=event).exists()
    assert_api_error(client_a.post(f"/api/v1/events/{event.public_id}/redeliver"), 409, "invalid_request_error",
                     "no_webhook_endpoint")
    Merchant.objects.filter(pk=merchant_a.merchant.pk).update(default_notify_url="https://default.example/h")
    second = order_with_event(merchant_a, "", number="WH-U2")
    assert list(WebhookDelivery.objects.filter(event=second).values_list("url", flat=True)) == [
        "https://default.example/h"]


def test_the_backlog_of_due_deliveries_is_a_metric(merchant_a) -> None:
    order_with_event(merchant_a, "https://shop.example/h")
    registry = CollectorRegistry()
    registry.register(StateCollector())
    text = generate_latest(registry).decode()
    assert "payments_webhook_backlog 1.0" in text
    assert "payments_webhook_oldest_due_age_seconds" in text


def test_ops_redeliver_many_events_and_rotate_a_secret_from_the_admin(admin_client, merchant_a) -> None:
    events = [order_with_event(merchant_a, "https://shop.example/h", number=f"ADM-{i}") for i in range(2)]
    response = admin_client.post("/admin/payments/event/", {
        "action": "redeliver", "_selected_action": [event.pk for event in events]})
    assert response.status_code == 302
    for event in events:
        assert WebhookDelivery.objects.filter(event=event).count() == 2  # the first chain and the new one

    old = Merchant.objects.get(pk=merchant_a.merchant.pk).webhook_secret
    response = admin_client.post("/admin/payments/merchant/", {
        "action": "rotate_webhook_secret", "_selected_action": [merchant_a.merchant.pk]}, follow=True)
    merchant = Merchant.objects.get(pk=merchant_a.merchant.pk)
    assert merchant.webhook_secret != old and merchant.previous_webhook_secret == old
    assert merchant.webhook_secret in response.content.decode()  # shown once, to the one who rotated it


def test_the_admin_refuses_an_unsafe_default_endpoint(admin_client, merchant_a, settings) -> None:
    settings.WEBHOOK_ALLOWED_HOSTS = []
    merchant = merchant_a.merchant
    response = admin_client.post(f"/admin/payments/merchant/{merchant.pk}/change/", {
        "name": merchant.name, "per_order_limit": merchant.per_order_limit,
        "rate_limit_per_s": merchant.rate_limit_per_s, "default_notify_url": "http://169.254.169.254/latest",
        "is_active": "on"})
    assert response.status_code == 200 and "private or reserved address" in response.content.decode()
    assert Merchant.objects.get(pk=merchant.pk).default_notify_url == ""


def test_the_sweep_queues_each_due_attempt_once_not_at_every_sweep(receiver: Receiver, db, settings,
                                                                   monkeypatch) -> None:
    # `make chaos`, Redis FLUSHALL: a due delivery stays due until a worker takes its task, and every sweep queued
    # another copy of it, faster than the backlogged webhooks worker drained them.
    from django.core.cache import cache

    from payments import tasks

    settings.WEBHOOK_SWEEP_FIRST_ATTEMPT_AFTER_S = 0  # the first attempt's task counts as lost at once
    queued: list[int] = []
    monkeypatch.setattr(tasks.deliver_webhook, "delay", queued.append)
    receiver.script["/sweep"] = [500]
    delivery = WebhookDelivery.objects.get(event=order_with_event(make_actor("Sweep merchant"),
                                                                  receiver.url("/sweep")))
    cache.delete_many([tasks.webhook_sweep_key(delivery.pk, n) for n in (0, 1)])  # ids repeat across test runs
    for _ in range(3):
        tasks.sweep_webhooks()
    assert queued == [delivery.pk]
    services.webhook_deliver(delivery_id=delivery.pk)  # answered 500: attempt 2 is due at once (schedule 0 s)
    for _ in range(3):
        tasks.sweep_webhooks()
    assert queued == [delivery.pk, delivery.pk]  # the next attempt is queued as soon as it is due, once
