"""Authentication by secret key, merchant isolation, and the per-merchant rate limit."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from payments import services

ORDERS = "/api/v1/orders"
BODY = {"merchant_order_no": "A-1", "amount": 1050, "currency": "CNY", "channel": "sandbox"}


def with_header(value: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=value)
    return client


def test_a_valid_key_is_accepted(client_a) -> None:
    assert client_a.get(ORDERS).status_code == 200


def test_a_missing_key_is_401(outsider, assert_api_error) -> None:
    response = outsider.get(ORDERS)
    assert_api_error(response, 401, "authentication_error", "authentication_failed")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Token sk_test_x", "sk_test_x"])
def test_a_malformed_header_is_401(db, assert_api_error, header: str) -> None:
    assert_api_error(with_header(header).get(ORDERS), 401, "authentication_error", "authentication_failed")


def test_an_unknown_key_is_401(db, assert_api_error) -> None:
    response = with_header("Bearer sk_test_doesnotexist").get(ORDERS)
    assert_api_error(response, 401, "authentication_error", "authentication_failed")


def test_a_revoked_key_is_401_and_the_new_one_works(merchant_a, assert_api_error) -> None:
    new_key = services.api_key_rotate(merchant=merchant_a.merchant)
    assert_api_error(merchant_a.client().get(ORDERS), 401, "authentication_error", "authentication_failed")
    assert with_header(f"Bearer {new_key}").get(ORDERS).status_code == 200


def test_a_key_revoked_elsewhere_is_refused_once_the_cache_ttl_has_passed(merchant_a, settings,
                                                                            assert_api_error) -> None:
    # Another process revokes the key: this one only learns of it when its cached read expires.
    settings.API_KEY_CACHE_TTL_S = 0.3
    client = merchant_a.client()
    assert client.get(ORDERS).status_code == 200
    merchant_a.merchant.api_keys.update(revoked_at=timezone.now())
    revoked = time.monotonic()
    while client.get(ORDERS).status_code == 200:
        assert time.monotonic() - revoked < 5, "a revoked key kept working past the cache TTL"
        time.sleep(0.02)
    assert_api_error(client.get(ORDERS), 401, "authentication_error", "authentication_failed")
    assert time.monotonic() - revoked >= 0.1  # trusted for the TTL, not read on every request


def test_a_deactivated_merchant_is_refused_once_the_cache_ttl_has_passed(merchant_a, settings,
                                                                         assert_api_error) -> None:
    settings.API_KEY_CACHE_TTL_S = 0
    client = merchant_a.client()
    assert client.get(ORDERS).status_code == 200
    type(merchant_a.merchant).objects.filter(pk=merchant_a.merchant.pk).update(is_active=False)
    assert_api_error(client.get(ORDERS), 401, "authentication_error", "authentication_failed")


def test_an_unauthenticated_post_creates_nothing(outsider, merchant_a, assert_api_error) -> None:
    assert_api_error(outsider.post(ORDERS, BODY, format="json"), 401, "authentication_error", "authentication_failed")
    assert not merchant_a.merchant.orders.exists()


# -- isolation -------------------------------------------------------------------------------------------


@pytest.fixture
def order_of_a(merchant_a, paid_order):
    order = paid_order(merchant_a)
    refund, _ = services.refund_request(order_id=order.pk, merchant_refund_no="R-1", amount=100)
    return order, refund


@pytest.mark.parametrize(
    "method, path",
    [
        ("get", "/api/v1/orders/{order}"),
        ("post", "/api/v1/orders/{order}/close"),
        ("get", "/api/v1/orders/{order}/refunds"),
        ("post", "/api/v1/orders/{order}/refunds"),
        ("get", "/api/v1/refunds/{refund}"),
    ],
)
def test_another_merchants_objects_are_404(client_b, order_of_a, assert_api_error, method: str, path: str) -> None:
    order, refund = order_of_a
    url = path.format(order=order.public_id, refund=refund.public_id)
    body = {"merchant_refund_no": "R-2", "amount": 100} if url.endswith("/refunds") else None
    response = getattr(client_b, method)(url, body, format="json")
    assert_api_error(response, 404, "invalid_request_error", "not_found")
    order.refresh_from_db()
    assert (order.status, order.refunds.count()) == ("succeeded", 1)


def test_another_merchants_orders_are_not_listed(client_a, client_b) -> None:
    client_a.post(ORDERS, BODY, format="json")
    mine = client_b.post(ORDERS, BODY, format="json").json()
    assert [o["id"] for o in client_b.get(ORDERS).json()["data"]] == [mine["id"]]
    assert client_b.get(ORDERS, {"merchant_order_no": "A-1"}).json()["data"] == [mine]


def test_another_merchants_order_is_not_a_cursor(client_a, client_b, assert_api_error) -> None:
    theirs = client_a.post(ORDERS, BODY, format="json").json()
    response = client_b.get(ORDERS, {"starting_after": theirs["id"]})
    assert_api_error(response, 400, "invalid_request_error", "parameter_invalid", "starting_after")


# -- rate limit ------------------------------------------------------------------------------------------


def test_over_the_rate_limit_is_429(merchant_a, client_a, client_b, assert_api_error) -> None:
    merchant_a.merchant.rate_limit_per_s = 2
    merchant_a.merchant.save()
    answers = [client_a.get(ORDERS) for _ in range(8)]
    limited = [answer for answer in answers if answer.status_code == 429]
    assert limited and all(answer.status_code in (200, 429) for answer in answers)
    assert_api_error(limited[0], 429, "rate_limit_error", "rate_limited")
    assert int(limited[0]["Retry-After"]) >= 1
    assert client_b.get(ORDERS).status_code == 200  # the limit is per merchant


def test_a_high_limit_is_counted_in_leases_and_never_exceeded(merchant_a, client_a, settings, monkeypatch,
                                                              assert_api_error) -> None:
    from payments.api import auth

    monkeypatch.setattr(auth, "_window", lambda: 1_000_000_000)  # one window for the whole test
    settings.RATE_LIMIT_LEASES_PER_S = 2  # leases of 10 for a limit of 20
    merchant_a.merchant.rate_limit_per_s = 20
    merchant_a.merchant.save()
    counter = f"ratelimit:{merchant_a.merchant.pk}:1000000000"
    auth._redis().delete(counter)

    answers = [client_a.get(ORDERS).status_code for _ in range(20)]
    assert answers == [200] * 20
    count = auth._redis().get(counter)
    assert count is not None and int(count) == 20  # two round trips to Redis, not twenty
    assert_api_error(client_a.get(ORDERS), 429, "rate_limit_error", "rate_limited")
    auth._redis().delete(counter)
