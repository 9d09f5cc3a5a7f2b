"""Idempotency-Key on POST, and merchant_order_no deduplication, alone and under concurrent requests."""

from __future__ import annotations

import pytest
from django.utils import timezone

from payments.models import IdempotencyRecord, Order, TransitionLog
from tests.concurrency import run_together

ORDERS = "/api/v1/orders"
BODY = {"merchant_order_no": "A-1001", "amount": 1050, "currency": "CNY", "channel": "sandbox"}


def post(client, body: dict = BODY, key: str | None = "key-1"):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(ORDERS, body, format="json", **headers)


def test_a_replay_returns_the_stored_answer(client_a) -> None:
    first = post(client_a)
    again = post(client_a)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert Order.objects.count() == 1


def test_a_replay_ignores_key_order_and_whitespace_of_the_body(client_a) -> None:
    first = post(client_a)
    reordered = client_a.post(
        ORDERS, '{ "channel": "sandbox", "currency": "CNY", "amount": 1050, "merchant_order_no": "A-1001" }',
        content_type="application/json", HTTP_IDEMPOTENCY_KEY="key-1",
    )
    assert reordered.json() == first.json() and reordered["Idempotent-Replayed"] == "true"


def test_the_same_key_with_another_body_is_409(client_a, assert_api_error) -> None:
    post(client_a)
    response = post(client_a, {**BODY, "amount": 1051})
    assert_api_error(response, 409, "idempotency_error", "idempotency_key_reused")
    assert list(Order.objects.values_list("amount", flat=True)) == [1050]


def test_the_same_key_for_a_new_order_is_409_and_writes_nothing(client_a, assert_api_error) -> None:
    # The order, its log row and the key's answer are one statement: the key's conflict undoes the order.
    post(client_a)
    response = post(client_a, {**BODY, "merchant_order_no": "A-1002"})
    assert_api_error(response, 409, "idempotency_error", "idempotency_key_reused")
    assert list(Order.objects.values_list("merchant_order_no", flat=True)) == ["A-1001"]
    assert not TransitionLog.objects.filter(object_type="order").exclude(
        object_id__in=Order.objects.values("public_id")).exists()


def test_a_new_key_for_an_existing_order_stores_the_existing_order_as_its_answer(client_a) -> None:
    first = post(client_a)
    second = post(client_a, key="key-2")
    again = post(client_a, key="key-2")
    assert (first.status_code, second.status_code, again.status_code) == (201, 200, 200)
    assert second.json() == again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in second


def test_an_expired_answer_is_not_replayed(client_a, merchant_a) -> None:
    first = post(client_a)
    IdempotencyRecord.objects.filter(merchant=merchant_a.merchant).update(expires_at=timezone.now())
    again = post(client_a)  # the order exists: the request runs again and finds it
    assert (first.status_code, again.status_code) == (201, 200)
    assert "Idempotent-Replayed" not in again and again.json()["id"] == first.json()["id"]
    assert IdempotencyRecord.objects.get(merchant=merchant_a.merchant).response_status == 200


def test_the_same_key_on_another_path_is_409(client_a, assert_api_error) -> None:
    order = post(client_a).json()
    response = client_a.post(f"{ORDERS}/{order['id']}/close", format="json", HTTP_IDEMPOTENCY_KEY="key-1")
    assert_api_error(response, 409, "idempotency_error", "idempotency_key_reused")


@pytest.mark.parametrize("key", ["k" * 256, "", "key\n1", "key\x001"])
def test_an_invalid_key_is_400(client_a, assert_api_error, key: str) -> None:
    response = post(client_a, key=key)
    assert_api_error(response, 400, "invalid_request_error", "idempotency_key_invalid", "Idempotency-Key")
    assert not Order.objects.exists()


def test_a_key_of_255_characters_is_accepted(client_a) -> None:
    assert post(client_a, key="k" * 255).status_code == 201


def test_keys_are_scoped_per_merchant(client_a, client_b, merchant_b) -> None:
    mine = post(client_a)
    theirs = post(client_b, {**BODY, "amount": 999})
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in theirs
    assert merchant_b.merchant.orders.get().amount == 999


def test_an_error_is_replayed_as_the_same_error(client_a) -> None:
    first = post(client_a, {**BODY, "amount": 0})
    again = post(client_a, {**BODY, "amount": 0})
    assert first.status_code == again.status_code == 400
    assert again.json() == first.json() and first.json()["error"]["code"] == "amount_invalid"
    assert again["Idempotent-Replayed"] == "true"


# -- concurrency -----------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_key_create_one_order(merchant_a) -> None:
    answers = run_together(20, lambda i: post(merchant_a.client()))

    assert merchant_a.merchant.orders.count() == 1
    order_id = merchant_a.merchant.orders.get().public_id
    originals = [a for a in answers if a.status_code == 201 and "Idempotent-Replayed" not in a]
    replays = [a for a in answers if a.get("Idempotent-Replayed") == "true"]
    in_flight = [a for a in answers if a.status_code == 409]
    assert len(originals) == 1 and originals[0].json()["id"] == order_id
    assert all(a.status_code in (200, 201) and a.json()["id"] == order_id for a in replays)
    assert all(a.json()["error"]["code"] == "idempotency_key_in_flight" for a in in_flight)
    assert len(originals) + len(replays) + len(in_flight) == 20


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_with_one_merchant_order_no_create_one_order(merchant_a) -> None:
    answers = run_together(20, lambda i: post(merchant_a.client(), key=None))

    assert merchant_a.merchant.orders.count() == 1
    order_id = merchant_a.merchant.orders.get().public_id
    assert sorted(a.status_code for a in answers) == [200] * 19 + [201]
    assert {a.json()["id"] for a in answers} == {order_id}
