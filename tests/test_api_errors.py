"""The error codes of API.md's table not covered elsewhere, wrong methods and paths, and the ops endpoints."""

from __future__ import annotations

import socket

import pytest
from django.db import connection

from channels.registry import get_channel
from payments.models import Order

ORDERS = "/api/v1/orders"
BODY = {"merchant_order_no": "A-1", "amount": 1050, "currency": "CNY", "channel": "sandbox"}


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unreachable_sandbox(settings):
    settings.SANDBOX_API_BASE = f"http://127.0.0.1:{unused_port()}"
    get_channel.cache_clear()
    yield
    get_channel.cache_clear()


def test_closing_with_an_unreachable_channel_is_502(client_a, unreachable_sandbox, assert_api_error) -> None:
    order = client_a.post(ORDERS, BODY, format="json").json()
    response = client_a.post(f"{ORDERS}/{order['id']}/close", HTTP_IDEMPOTENCY_KEY="close-1")
    assert_api_error(response, 502, "channel_error", "channel_unreachable")
    assert Order.objects.get(public_id=order["id"]).status == "created"
    # Safe to retry with the same key: a 5xx is not stored as the key's answer.
    again = client_a.post(f"{ORDERS}/{order['id']}/close", HTTP_IDEMPOTENCY_KEY="close-1")
    assert again.status_code == 502 and "Idempotent-Replayed" not in again


@pytest.mark.django_db(transaction=True)
def test_an_unavailable_database_is_503(client_a, assert_api_error) -> None:
    port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = unused_port()
    try:
        response = client_a.get(ORDERS)
    finally:
        connection.close()
        connection.settings_dict["PORT"] = port
        connection.ensure_connection()
    assert_api_error(response, 503, "api_error", "service_unavailable")
    assert client_a.get(ORDERS).status_code == 200


def test_a_wrong_method_is_405(client_a, assert_api_error) -> None:
    order = client_a.post(ORDERS, BODY, format="json").json()
    assert_api_error(client_a.delete(f"{ORDERS}/{order['id']}"), 405, "invalid_request_error", "method_not_allowed")
    assert_api_error(client_a.put(ORDERS, BODY, format="json"), 405, "invalid_request_error", "method_not_allowed")
    assert Order.objects.get(public_id=order["id"]).status == "created"


def test_an_unknown_path_is_404(client_a) -> None:
    assert client_a.get("/api/v1/nothing-here").status_code == 404


def test_an_unknown_order_is_404(client_a, assert_api_error) -> None:
    assert_api_error(client_a.get(f"{ORDERS}/ord_doesnotexist"), 404, "invalid_request_error", "not_found")


def test_a_form_body_is_400(client_a, assert_api_error) -> None:
    response = client_a.post(ORDERS, "amount=1050", content_type="application/x-www-form-urlencoded")
    assert_api_error(response, 400, "invalid_request_error", "unsupported_media_type")


# -- ops endpoints -----------------------------------------------------------------------------------------


def test_the_openapi_schema_lists_the_api(client) -> None:
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert b"/api/v1/orders" in response.content and b"/api/v1/refunds/{refund_id}" in response.content


def test_healthz(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_checks_database_and_broker(client, db) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
