"""Shared fixtures: named actors, API clients, and the real processes the e2e tests run against."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from payments import services
from payments.models import Merchant


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
