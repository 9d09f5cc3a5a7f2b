"""The backup account (the seed design's automatic switch), on the real worker and simulator: while the primary
account's breaker is open new charges go to the backup, and everything about such an order (its notification,
query, refund) stays with the account it was placed with."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.management import call_command

from channels.registry import BACKUP, PRIMARY, breakers, get_channel
from payments import services
from payments.models import ChannelNotification, Order, Refund
from reconciliation.models import Run
from tests.conftest import make_actor
from tests.e2e.conftest import Simulator, wait_until
from tests.e2e.orders import create_order, order_in, pay

pytestmark = pytest.mark.e2e


def test_charges_go_to_the_backup_while_the_primary_is_open_and_stay_there(e2e: Simulator) -> None:
    primary, backup = get_channel("sandbox", PRIMARY), get_channel("sandbox", BACKUP)
    assert primary.account != backup.account
    (primary_breaker,) = [b for b in breakers() if b.channel == "sandbox" and b.account == primary.account]
    client = make_actor("Backup merchant").client()

    primary_breaker.set_mode("force_open")
    on_backup = order_in(create_order(client, "BAK-1")["id"], "pending")
    assert on_backup.channel_account == backup.account
    assert e2e.trade(on_backup.public_id)["create_calls"] == 1  # at the backup: the primary was never called

    primary_breaker.set_mode("auto")  # the primary is back: new charges go there; the first order stays put
    on_primary = order_in(create_order(client, "BAK-2")["id"], "pending")
    assert on_primary.channel_account == primary.account

    pay(on_backup)
    paid = order_in(on_backup.public_id, "succeeded")
    notification = ChannelNotification.objects.get(order=paid)
    assert notification.payload is not None
    assert (notification.state, notification.payload["account"]) == ("processed", backup.account)

    # A query and a refund go to the backup account too: the primary has never heard of this trade.
    assert primary.query_trade(out_trade_no=paid.public_id).status == "not_found"
    assert services.order_query(order_id=paid.pk).status == "succeeded"
    response = client.post(f"/api/v1/orders/{paid.public_id}/refunds", {"merchant_refund_no": "BAK-R1",
                                                                        "amount": 1000}, format="json")
    assert response.status_code == 201
    refund = wait_until(lambda: Refund.objects.filter(public_id=response.json()["id"], status="succeeded").first(),
                        what="the refund at the backup account")
    assert refund.amount == 1000
    assert Order.objects.get(pk=paid.pk).status == "refunded"


def test_each_account_is_reconciled_against_its_own_bill(e2e: Simulator) -> None:
    primary, backup = get_channel("sandbox", PRIMARY), get_channel("sandbox", BACKUP)
    (primary_breaker,) = [b for b in breakers() if b.channel == "sandbox" and b.account == primary.account]
    client = make_actor("Two-account merchant").client()
    primary_breaker.set_mode("force_open")
    on_backup = order_in(create_order(client, "REC-B")["id"], "pending")
    primary_breaker.set_mode("auto")
    on_primary = order_in(create_order(client, "REC-P")["id"], "pending")
    for order in (on_backup, on_primary):
        pay(order)
        order_in(order.public_id, "succeeded")

    out = io.StringIO()
    call_command("reconcile", "--channel", "sandbox", "--date", dt.datetime.now(dt.UTC).date().isoformat(),
                 stdout=out)
    runs = {run.account: run for run in Run.objects.filter(channel="sandbox")}
    assert set(runs) == {primary.account, backup.account}
    for account, order in ((primary.account, on_primary), (backup.account, on_backup)):
        run = runs[account]
        # Each bill lists its own account's payment, and our side of each run is the orders placed with it: the
        # other account's payment is neither missing from this bill nor missing from our books.
        assert (run.status, run.bill_rows, run.discrepancies.count()) == ("succeeded", 1, 0), out.getvalue()
        assert run.fingerprints_equal
        assert run.totals["internal"]["payments"] == {"count": 1, "amount": order.amount}
