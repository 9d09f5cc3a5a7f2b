"""Which account a charge goes to, and that an order's account is found again (channels.registry)."""

from __future__ import annotations

import pytest

from channels.base import Channel
from channels.breaker import SharedBreaker
from channels.instrumented import InstrumentedChannel
from channels.registry import BACKUP, PRIMARY, accounts, channel_for_account, channel_for_new_charge, get_channel
from tests.e2e.conftest import channel_settings, reset_breakers


def breaker(channel: Channel) -> SharedBreaker:
    assert isinstance(channel, InstrumentedChannel)
    return channel.breaker


@pytest.fixture
def with_backup(settings):
    reset_breakers()
    with channel_settings({"SANDBOX_BACKUP_MERCHANT_ID": "sbx_m_backup", "SANDBOX_BACKUP_SECRET": "backup-secret"}):
        yield
    reset_breakers()


def test_without_a_backup_a_charge_goes_to_the_primary_even_when_it_is_open(settings) -> None:
    reset_breakers()
    primary = get_channel("sandbox")
    breaker(primary).set_mode("force_open")
    try:
        assert channel_for_new_charge("sandbox") is primary
        assert [channel.account for channel in accounts("sandbox")] == [settings.SANDBOX_MERCHANT_ID]
    finally:
        reset_breakers()


def test_the_backup_takes_new_charges_only_while_the_primary_is_open(with_backup) -> None:
    primary, backup = get_channel("sandbox", PRIMARY), get_channel("sandbox", BACKUP)
    assert channel_for_new_charge("sandbox") is primary
    breaker(primary).set_mode("force_open")
    assert channel_for_new_charge("sandbox") is backup
    breaker(backup).set_mode("force_open")
    assert channel_for_new_charge("sandbox") is primary  # both open: the work is held at the primary
    breaker(primary).set_mode("auto")
    assert channel_for_new_charge("sandbox") is primary


def test_an_order_finds_its_own_account_and_an_unknown_one_is_an_error(with_backup, settings) -> None:
    assert channel_for_account("sandbox", "").account == settings.SANDBOX_MERCHANT_ID  # orders from before
    assert channel_for_account("sandbox", "sbx_m_backup").account == "sbx_m_backup"
    with pytest.raises(LookupError):
        channel_for_account("sandbox", "sbx_m_gone")


@pytest.mark.django_db
def test_a_later_attempt_never_changes_the_account(with_backup) -> None:
    # An order charged once before accounts were recorded ('' is the primary): with the primary open, a new
    # charge would go to the backup, but this order's trade may be at the primary, so its account stays.
    from channels.base import CircuitOpen
    from payments import services
    from payments.models import Order
    from tests.conftest import make_actor

    order, _ = services.order_create(merchant=make_actor("Accounts merchant").merchant, merchant_order_no="ACC-1",
                                     amount=100, currency="CNY", channel="sandbox")
    Order.objects.filter(pk=order.pk).update(charge_attempts=1, channel_account="")
    breaker(get_channel("sandbox", PRIMARY)).set_mode("force_open")
    with pytest.raises(CircuitOpen):  # held at the primary, where its first attempt went
        services.order_charge(order_id=order.pk)
    order.refresh_from_db()
    assert (order.charge_attempts, order.channel_account) == (2, "")
