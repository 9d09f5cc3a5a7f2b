"""Work for a channel account whose breaker is open is held by the real worker: rescheduled without spending
its retries, the order left ``created`` and unflagged, and charged once the breaker lets calls through."""

from __future__ import annotations

import time

import pytest

from channels.breaker import TRUST_S
from channels.registry import breakers
from payments.models import Order
from tests.conftest import make_actor
from tests.e2e.conftest import Simulator, wait_until
from tests.e2e.orders import create_order, order_in

pytestmark = pytest.mark.e2e


def test_a_charge_is_held_while_the_breaker_is_open_and_placed_once_it_closes(e2e: Simulator, settings) -> None:
    # The worker's breakers too: the same accounts, the same Redis keys. Both accounts (primary and backup) are
    # open: with only the primary open, new charges go to the backup (tests/e2e/test_backup_account.py).
    sandbox = [b for b in breakers() if b.channel == "sandbox"]
    assert len(sandbox) == 2
    for breaker in sandbox:
        breaker.set_mode("force_open")
    # A process that saw the breaker closed trusts that for TRUST_S (channels/breaker.py): the worker may have
    # made a call in the test before this one.
    time.sleep(TRUST_S + 0.1)
    client = make_actor("Breaker merchant").client()
    order_id = create_order(client, "BRK-1")["id"]

    # The worker runs TASK_MAX_RETRIES=4: more holds than that, and nothing gave up.
    order = wait_until(lambda: Order.objects.filter(public_id=order_id, charge_attempts__gte=7).first(),
                       timeout_s=30, what="the charge to be held seven times")
    assert order.status == "created" and order.attention == ""
    assert e2e.trade(order_id) == {}  # nothing reached the channel

    for breaker in sandbox:
        breaker.set_mode("auto")
    order = order_in(order_id, "pending")
    assert order.attention == ""
    # Held attempts counted as attempts, so the charge asked first, then created one trade.
    assert e2e.trade(order_id)["create_calls"] == 1
