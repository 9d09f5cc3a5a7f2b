"""POST/GET /api/v1/orders/{id}/refunds and GET /api/v1/refunds/{id}."""

from __future__ import annotations

import re

import pytest
from django.db.models import Sum

from channels.base import RefundResult, RefundStatus, TradeResult, TradeStatus
from payments import services
from payments.models import Refund
from tests.concurrency import run_together

REFUND_FIELDS = {
    "id", "object", "order", "merchant_refund_no", "amount", "currency", "status", "reason", "channel_refund_no",
    "failure_code", "created_at", "succeeded_at",
}


def refunds_of(order) -> str:
    return f"/api/v1/orders/{order.public_id}/refunds"


def refund(client, order, **body):
    return client.post(refunds_of(order), {"merchant_refund_no": "R-1", "amount": 500, **body}, format="json")


def test_a_refund_answers_201_with_the_refund(client_a, merchant_a, paid_order) -> None:
    order = paid_order(merchant_a, currency="USD")
    response = refund(client_a, order, reason="damaged")
    assert response.status_code == 201
    body = response.json()
    assert REFUND_FIELDS <= set(body)
    assert re.fullmatch(r"rfd_[A-Za-z0-9_]+", body["id"]) and len(body["id"]) <= 32
    keys = ("object", "order", "merchant_refund_no", "amount", "currency", "status", "reason")
    assert {k: body[k] for k in keys} == {
        "object": "refund", "order": order.public_id, "merchant_refund_no": "R-1", "amount": 500, "currency": "USD",
        "status": "pending", "reason": "damaged",
    }
    assert body["channel_refund_no"] is None and body["failure_code"] is None and body["succeeded_at"] is None
    assert Refund.objects.get(public_id=body["id"]).order == order


def test_get_answers_the_refund(client_a, merchant_a, paid_order) -> None:
    created = refund(client_a, paid_order(merchant_a)).json()
    response = client_a.get(f"/api/v1/refunds/{created['id']}")
    assert response.status_code == 200 and response.json() == created


def test_get_unknown_refund_is_404(client_a, assert_api_error) -> None:
    assert_api_error(client_a.get("/api/v1/refunds/rfd_doesnotexist"), 404, "invalid_request_error", "not_found")


def test_list_answers_the_orders_refunds_newest_first(client_a, merchant_a, paid_order) -> None:
    order = paid_order(merchant_a)
    other = paid_order(merchant_a, merchant_order_no="PAID-2")
    ids = [refund(client_a, order, merchant_refund_no=f"R-{i}", amount=100).json()["id"] for i in range(3)]
    refund(client_a, other)

    page = client_a.get(refunds_of(order), {"limit": 2}).json()
    assert page["object"] == "list" and page["has_more"] is True
    assert [r["id"] for r in page["data"]] == ids[:0:-1]
    rest = client_a.get(refunds_of(order), {"limit": 2, "starting_after": ids[1]}).json()
    assert [r["id"] for r in rest["data"]] == ids[:1] and rest["has_more"] is False


@pytest.mark.parametrize(
    "channel_says, state", [(None, "created"), (TradeStatus.WAITING, "pending"), (TradeStatus.CLOSED, "closed")]
)
def test_a_refund_of_an_unpaid_order_is_409(client_a, merchant_a, assert_api_error, channel_says, state) -> None:
    order, _ = services.order_create(
        merchant=merchant_a.merchant, merchant_order_no="U-1", amount=1000, currency="CNY", channel="sandbox"
    )
    if channel_says:  # pending or closed, through the real service as a channel answer
        trade = TradeResult(out_trade_no=order.public_id, status=channel_says, amount=1000, currency="CNY",
                            pay_url="http://127.0.0.1:8101/pay/x")
        order = services.order_apply_trade(order_id=order.pk, trade=trade, source="worker")
    assert order.status == state
    assert_api_error(refund(client_a, order), 409, "invalid_request_error", "order_state")
    assert not order.refunds.exists()


def test_a_refund_over_the_amount_is_422(client_a, merchant_a, paid_order, assert_api_error) -> None:
    order = paid_order(merchant_a, amount=1000)
    assert refund(client_a, order, amount=600).status_code == 201
    response = refund(client_a, order, merchant_refund_no="R-2", amount=401)
    assert_api_error(response, 422, "invalid_request_error", "refund_exceeds_amount", "amount")
    assert refund(client_a, order, merchant_refund_no="R-3", amount=400).status_code == 201


def test_a_failed_refund_frees_its_amount(client_a, merchant_a, paid_order) -> None:
    order = paid_order(merchant_a, amount=1000)
    first = Refund.objects.get(public_id=refund(client_a, order, amount=1000).json()["id"])
    assert refund(client_a, order, merchant_refund_no="R-2", amount=1000).status_code == 422
    services.refund_apply_result(
        refund_id=first.pk, source="worker",
        result=RefundResult(out_refund_no=first.public_id, status=RefundStatus.FAILED, failure_code="refused"),
    )
    assert refund(client_a, order, merchant_refund_no="R-2", amount=1000).status_code == 201


@pytest.mark.parametrize(
    "body, code, param",
    [
        ({"amount": 0}, "amount_invalid", "amount"),
        ({"amount": 1.5}, "amount_invalid", "amount"),
        ({"amount": "500"}, "amount_invalid", "amount"),
        ({"merchant_refund_no": "R 1"}, "parameter_invalid", "merchant_refund_no"),
        ({"reason": "x" * 128}, "parameter_invalid", "reason"),
        ({"refund_all": True}, "parameter_unknown", "refund_all"),
    ],
)
def test_an_invalid_refund_is_400(client_a, merchant_a, paid_order, assert_api_error, body, code, param) -> None:
    order = paid_order(merchant_a)
    assert_api_error(refund(client_a, order, **body), 400, "invalid_request_error", code, param)
    assert not order.refunds.exists()


def test_a_repeated_merchant_refund_no_with_the_same_parameters_returns_the_refund(
    client_a, merchant_a, paid_order
) -> None:
    order = paid_order(merchant_a)
    first = refund(client_a, order, reason="damaged")
    again = refund(client_a, order, reason="damaged")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert order.refunds.count() == 1


@pytest.mark.parametrize("changes", [{"amount": 501}, {"reason": "other"}])
def test_a_repeated_merchant_refund_no_with_other_parameters_is_409(
    client_a, merchant_a, paid_order, assert_api_error, changes: dict
) -> None:
    order = paid_order(merchant_a)
    refund(client_a, order, reason="damaged")
    response = refund(client_a, order, **{"reason": "damaged", **changes})
    assert_api_error(response, 409, "invalid_request_error", "duplicate_merchant_refund_no", "merchant_refund_no")
    assert order.refunds.count() == 1


def test_merchant_refund_no_is_unique_per_order_only(client_a, merchant_a, paid_order) -> None:
    first, second = paid_order(merchant_a), paid_order(merchant_a, merchant_order_no="PAID-2")
    assert refund(client_a, first).status_code == refund(client_a, second).status_code == 201


# -- concurrency -----------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_refunds_never_exceed_the_amount(merchant_a, paid_order) -> None:
    order = paid_order(merchant_a, amount=1000)

    answers = run_together(20, lambda i: refund(merchant_a.client(), order, merchant_refund_no=f"R-{i}", amount=300))

    assert sorted(a.status_code for a in answers) == [201] * 3 + [422] * 17
    assert all(a.json()["error"]["code"] == "refund_exceeds_amount" for a in answers if a.status_code == 422)
    committed = order.refunds.exclude(status="failed").aggregate(total=Sum("amount"))["total"]
    assert committed == 900 and order.refunds.count() == 3


def test_a_refund_replayed_with_its_idempotency_key_answers_the_same_refund(client_a, merchant_a, paid_order) -> None:
    order = paid_order(merchant_a, amount=1000)
    first = client_a.post(refunds_of(order), {"merchant_refund_no": "R-1", "amount": 500}, format="json",
                          HTTP_IDEMPOTENCY_KEY="refund-key")
    again = client_a.post(refunds_of(order), {"merchant_refund_no": "R-1", "amount": 500}, format="json",
                          HTTP_IDEMPOTENCY_KEY="refund-key")
    other = client_a.post(refunds_of(order), {"merchant_refund_no": "R-2", "amount": 100}, format="json",
                          HTTP_IDEMPOTENCY_KEY="refund-key")
    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 409)
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert list(order.refunds.values_list("merchant_refund_no", flat=True)) == ["R-1"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_refunds_with_one_idempotency_key_make_one_refund(merchant_a, paid_order) -> None:
    order = paid_order(merchant_a, amount=1000)

    answers = run_together(10, lambda i: merchant_a.client().post(
        refunds_of(order), {"merchant_refund_no": "R-1", "amount": 300}, format="json", HTTP_IDEMPOTENCY_KEY="k"))

    refund_id = order.refunds.get().public_id  # exactly one
    originals = [a for a in answers if a.status_code == 201 and "Idempotent-Replayed" not in a]
    assert len(originals) == 1
    assert all(a.status_code == 201 and a.json()["id"] == refund_id for a in answers)
