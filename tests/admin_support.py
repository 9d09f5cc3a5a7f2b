"""Shared by the admin's tests: the staff groups, staff users made as `create_staff_user` makes them, the sandbox
simulator as the channel, and orders put where a test needs them through the real services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command

from payments import services
from payments.models import Merchant, Order
from payments.staff import sync_groups
from tests.e2e.conftest import Simulator, _stop, channel_settings, start_simulator


def staff_groups() -> None:
    """The data migration's groups. A test on a transactional database (the e2e and browser tests) empties every
    table when it ends, groups included: this puts them back as the migration made them."""
    sync_groups(apps)


def staff_user(name: str, group: str, password: str = "pw-" + "x" * 12) -> User:
    """A staff user made by `manage.py create_staff_user NAME --group G` itself."""
    call_command("create_staff_user", name, "--group", group, "--password", password, stdout=open("/dev/null", "w"))
    return User.objects.get(username=name)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """The sandbox simulator as the channel of the test process (the admin calls it while the request waits)."""
    account = {"SANDBOX_MERCHANT_ID": settings.SANDBOX_MERCHANT_ID, "SANDBOX_SECRET": settings.SANDBOX_SECRET}
    proc, sim = start_simulator("sandbox", account, Path(tmp_path_factory.mktemp("sim")))
    # Notifications go nowhere (the discard port) unless a test points PUBLIC_BASE_URL at its live server.
    with channel_settings({"SANDBOX_API_BASE": sim.base_url, "PUBLIC_BASE_URL": "http://127.0.0.1:9"}):
        yield sim
    _stop(proc)


def pending_order(merchant: Merchant, number: str, amount: int = 1050) -> Order:
    """An order placed with the simulator (``pending``, with its pay page), as the charge task would."""
    order, _ = services.order_create(merchant=merchant, merchant_order_no=number, amount=amount, currency="CNY",
                                     channel="sandbox")
    services.order_charge(order_id=order.pk)
    order.refresh_from_db()
    assert order.status == "pending", order.status
    return order


def pay_at_channel(order: Order) -> None:
    """The payer pays on the simulator's page; our order does not know yet."""
    httpx.post(order.pay_url, data={"action": "pay"}, timeout=10).raise_for_status()
