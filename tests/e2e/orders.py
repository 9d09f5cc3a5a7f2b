"""Driving an order through the real API and a simulator's payer page, for the e2e tests of every channel."""

from __future__ import annotations

from typing import Any

import httpx

from payments.models import Order
from tests.e2e.conftest import wait_until


def create_order(
    client: Any, number: str = "E2E-1", amount: int = 1000, *, channel: str = "sandbox", **extra: Any
) -> dict:
    response = client.post(
        "/api/v1/orders",
        {"merchant_order_no": number, "amount": amount, "currency": "CNY", "channel": channel, **extra},
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()


def order_in(order_id: str, *states: str, timeout_s: float = 20) -> Order:
    return wait_until(
        lambda: Order.objects.filter(public_id=order_id, status__in=states).first(),
        timeout_s=timeout_s, what=f"order {order_id} to reach {states}",
    )


def pay(order: Order) -> httpx.Response:
    """The payer presses Pay on the order's pay page."""
    return httpx.post(order.pay_url, data={"action": "pay"}, timeout=10)
