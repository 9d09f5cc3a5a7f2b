"""The admin for ops, finance and support: groups and their permissions, what each sees, actions through the
services with the staff user in the transition log, an order's story, the dashboard, money as people read it."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from channels.base import TradeResult, TradeStatus
from channels.money import format_money
from payments import services
from payments.models import ChannelNotification, Order, TransitionLog
from payments.staff import ACTIONS, STAFF_GROUPS
from reconciliation.models import Discrepancy, Run
from tests.admin_support import pay_at_channel, pending_order, sandbox, staff_groups, staff_user
from tests.conftest import Actor

__all__ = ["sandbox"]  # the fixture, imported for the tests below

CHANGELIST = reverse("admin:payments_order_changelist")


@pytest.fixture(autouse=True)
def groups(db) -> None:
    staff_groups()


def login(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def action_names(page) -> set[str]:
    """The actions a changelist page offers."""
    return set(re.findall(r'<option value="(\w+)">', page.content.decode())) - {""}


def paid(actor: Actor, number: str = "PAID-1", amount: int = 1050) -> Order:
    order, _ = services.order_create(merchant=actor.merchant, merchant_order_no=number, amount=amount, currency="CNY",
                                     channel="sandbox")
    trade = TradeResult(out_trade_no=order.public_id, status=TradeStatus.SUCCEEDED, amount=amount, currency="CNY",
                        channel_trade_no="T-" + number)
    return services.order_apply_trade(order_id=order.pk, trade=trade, source="worker")


def test_format_money_uses_each_currencys_minor_unit() -> None:
    assert format_money(1050, "CNY") == "10.50 CNY"
    assert format_money(1, "USD") == "0.01 USD"
    assert format_money(500, "JPY") == "500 JPY"
    assert format_money(None, "CNY") == ""
    assert format_money(1050, "XXX") == "1050 (minor units) XXX"


def test_the_migration_made_the_groups_with_their_permissions() -> None:
    assert sorted(Group.objects.filter(name__in=STAFF_GROUPS).values_list("name", flat=True)) == list(STAFF_GROUPS)
    ops = staff_user("olga", "ops")
    finance = staff_user("fiona", "finance")
    support = staff_user("sam", "support")
    for user in (ops, finance, support):
        assert user.is_staff and user.has_perm("payments.view_order") and user.has_perm("reconciliation.view_run")
        assert not user.has_perm("payments.change_order") and not user.has_perm("payments.change_merchant")
    assert ops.has_perms(ACTIONS["ops"]) and not ops.has_perm("reconciliation.download_report")
    assert finance.has_perms(["reconciliation.download_report", "reconciliation.resolve_discrepancy"])
    assert not finance.has_perm("payments.operate_order")
    assert not any(support.has_perm(p) for group in ACTIONS.values() for p in group)


def test_create_staff_user_takes_only_the_staff_groups() -> None:
    with pytest.raises(CommandError):
        call_command("create_staff_user", "mallory", "--group", "admins")
    Group.objects.filter(name="support").delete()
    with pytest.raises(CommandError, match="migrate"):
        call_command("create_staff_user", "sam", "--group", "support")
    # Moving a user to another staff group drops the former one.
    staff_user("kim", "finance")
    user = staff_user("kim", "ops")
    assert list(user.groups.values_list("name", flat=True)) == ["ops"]


def test_only_ops_see_the_order_actions(merchant_a: Actor) -> None:
    paid(merchant_a)
    ops = login(staff_user("olga", "ops"))
    assert action_names(ops.get(CHANGELIST)) == {"requery", "close", "retry_charge", "refund", "accept_late_payment",
                                                 "refund_late_payment"}
    for name, group in (("sam", "support"), ("fiona", "finance")):
        page = login(staff_user(name, group)).get(CHANGELIST)
        assert page.status_code == 200 and action_names(page) == set()
    events = reverse("admin:payments_event_changelist")
    assert action_names(ops.get(events)) == {"redeliver"}
    assert action_names(login(User.objects.get(username="sam")).get(events)) == set()


def test_support_cannot_post_an_action(merchant_a: Actor) -> None:
    order = paid(merchant_a)
    support = login(staff_user("sam", "support"))
    support.post(CHANGELIST, {"action": "refund", "_selected_action": [order.pk], "amount": "1.00", "apply": "1"})
    order.refresh_from_db()
    assert order.amount_refunded == 0 and not order.refunds.exists()
    assert not TransitionLog.objects.filter(source="admin").exists()


def test_order_list_shows_money_and_finds_an_order_by_any_of_its_numbers(merchant_a: Actor) -> None:
    order = paid(merchant_a, "SHOP-77", amount=1050)
    other = paid(merchant_a, "SHOP-78")
    client = login(staff_user("sam", "support"))
    for term in (order.public_id, "SHOP-77", "T-SHOP-77"):
        page = client.get(CHANGELIST, {"q": term}).content.decode()
        assert order.public_id in page and other.public_id not in page, term
    page = client.get(CHANGELIST).content.decode()
    assert "10.50 CNY" in page and ">1050<" not in page
    for query in ({"status__exact": "succeeded"}, {"channel": "sandbox"}, {"attention": "any"},
                  {"created_at__gte": str(timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0))}):
        assert client.get(CHANGELIST, query).status_code == 200, query


def test_list_pages_make_a_fixed_number_of_queries(merchant_a: Actor) -> None:
    client = login(staff_user("sam", "support"))
    paid(merchant_a, "Q-1")
    pages = [CHANGELIST, reverse("admin:payments_refund_changelist"), reverse("admin:payments_event_changelist"),
             reverse("admin:payments_webhookdelivery_changelist"), reverse("admin:payments_transitionlog_changelist"),
             reverse("admin:payments_channelnotification_changelist"),
             reverse("admin:reconciliation_run_changelist"), reverse("admin:reconciliation_discrepancy_changelist")]
    counts = {}
    for url in pages:
        with CaptureQueriesContext(connection) as few:
            assert client.get(url).status_code == 200, url
        counts[url] = len(few)
    for n in range(2, 8):
        order = paid(merchant_a, f"Q-{n}")
        services.refund_request(order_id=order.pk, merchant_refund_no=f"R-{n}", amount=100)
    for url in pages:
        with CaptureQueriesContext(connection) as more:
            client.get(url)
        assert len(more) == counts[url], f"{url}: {counts[url]} queries with a row, {len(more)} with more"


def test_requery_applies_the_channels_answer_and_logs_the_staff_user(sandbox, merchant_a: Actor) -> None:
    order = pending_order(merchant_a.merchant, "SHOP-1")
    pay_at_channel(order)
    ops = login(staff_user("olga", "ops"))
    answer = ops.post(CHANGELIST, {"action": "requery", "_selected_action": [order.pk], "index": "0"}, follow=True)
    assert "pending → succeeded" in answer.content.decode()
    order.refresh_from_db()
    assert order.status == "succeeded"
    fired = TransitionLog.objects.get(object_id=order.public_id, transition="mark_succeeded")
    assert (fired.source, fired.detail["by"]) == ("admin", "olga")
    action = TransitionLog.objects.get(object_id=order.public_id, transition="admin_action")
    assert action.detail == {"action": "requery", "by": "olga", "outcome": "pending → succeeded"}
    assert (action.from_state, action.to_state, action.source) == ("pending", "succeeded", "admin")

    # Again: the order is not open any more; the channel is not asked, and that is logged too.
    ops.post(CHANGELIST, {"action": "requery", "_selected_action": [order.pk], "index": "0"})
    assert TransitionLog.objects.filter(object_id=order.public_id, transition="admin_action").count() == 2


def test_close_from_the_orders_page_goes_back_to_it(sandbox, merchant_a: Actor) -> None:
    order = pending_order(merchant_a.merchant, "SHOP-2")
    page = reverse("admin:payments_order_change", args=[order.pk])
    ops = login(staff_user("olga", "ops"))
    assert 'value="close"' in ops.get(page).content.decode()
    answer = ops.post(CHANGELIST, {"action": "close", "_selected_action": [order.pk], "_next": page})
    assert answer.status_code == 302 and answer["Location"] == page
    order.refresh_from_db()
    assert order.status == "closed"
    assert TransitionLog.objects.get(object_id=order.public_id, transition="mark_closed").detail["by"] == "olga"
    # A close that the state refuses is logged as refused.
    ops.post(CHANGELIST, {"action": "close", "_selected_action": [order.pk]})
    refused = TransitionLog.objects.filter(transition="admin_action").latest("id")
    assert refused.detail["outcome"].startswith("refused:")
    # An unsafe _next is ignored.
    answer = ops.post(CHANGELIST, {"action": "close", "_selected_action": [order.pk], "_next": "https://evil.test/"})
    assert answer["Location"] != "https://evil.test/"


def test_refund_takes_an_amount_in_major_units_within_what_was_paid(merchant_a: Actor) -> None:
    order = paid(merchant_a, amount=1050)
    ops = login(staff_user("olga", "ops"))
    form = ops.post(CHANGELIST, {"action": "refund", "_selected_action": [order.pk], "index": "0"})
    assert form.status_code == 200 and "at most 10.50 CNY" in form.content.decode()
    bad = ops.post(CHANGELIST, {"action": "refund", "_selected_action": [order.pk], "apply": "1", "amount": "1.005"})
    assert "more than 2 decimal places" in bad.content.decode()
    ops.post(CHANGELIST, {"action": "refund", "_selected_action": [order.pk], "apply": "1", "amount": "11.00"})
    assert not order.refunds.exists()
    assert "refused" in TransitionLog.objects.filter(transition="admin_action").latest("id").detail["outcome"]
    ops.post(CHANGELIST, {"action": "refund", "_selected_action": [order.pk], "apply": "1", "amount": "4.50",
                          "reason": "damaged"})
    (refund,) = order.refunds.all()
    assert (refund.amount, refund.reason) == (450, "damaged")
    created = TransitionLog.objects.get(object_id=refund.public_id, transition="create")
    assert (created.source, created.detail["by"]) == ("admin", "olga")


def test_orders_page_tells_its_story_in_time_order(merchant_a: Actor, settings) -> None:
    settings.TRACE_URL_TEMPLATE = "http://jaeger:16686/trace/{trace_id}"
    order = paid(merchant_a, amount=1050)
    Order.objects.filter(pk=order.pk).update(trace_id="ab" * 16)
    ChannelNotification.objects.create(channel="sandbox", channel_notification_id="n-1", body="{}", order=order,
                                       state="rejected", reason="bad_signature")
    services.refund_request(order_id=order.pk, merchant_refund_no="R-1", amount=300)
    services.admin_action_log(object_type="order", object_id=order.public_id, action="requery", by="olga",
                              from_state="succeeded", outcome="still succeeded")
    client = login(staff_user("sam", "support"))
    with CaptureQueriesContext(connection) as queries:
        page = client.get(reverse("admin:payments_order_change", args=[order.pk])).content.decode()
    story = page[page.index('id="story"'):]
    expected = ["created (created), 10.50 CNY via sandbox", "created → succeeded (mark_succeeded)",
                "event order.succeeded", "sandbox notification: rejected (bad_signature)",
                "created (pending), 3.00 CNY", "requery: still succeeded"]
    positions = [story.index(text) for text in expected]
    assert positions == sorted(positions)
    assert "olga (admin)" in story
    assert 'href="http://jaeger:16686/trace/' + "ab" * 16 + '"' in page
    assert "10.50 CNY" in page and "3.00 CNY" in page
    assert 'class="order-actions"' not in page  # support: no buttons
    assert len(queries) < 30


def test_trace_link_hidden_without_a_template(merchant_a: Actor, settings) -> None:
    settings.TRACE_URL_TEMPLATE = ""
    order = paid(merchant_a)
    Order.objects.filter(pk=order.pk).update(trace_id="cd" * 16)
    page = login(staff_user("sam", "support")).get(reverse("admin:payments_order_change", args=[order.pk]))
    assert "cd" * 16 in page.content.decode() and "/trace/" not in page.content.decode()


def test_dashboard_shows_today_per_channel_with_a_chart(merchant_a: Actor) -> None:
    paid(merchant_a, "D-1", amount=1050)
    paid(merchant_a, "D-2", amount=2000)
    services.order_create(merchant=merchant_a.merchant, merchant_order_no="D-3", amount=500, currency="CNY",
                          channel="sandbox")
    Run.objects.create(channel="sandbox", business_date=timezone.localdate() - dt.timedelta(days=1), version=1,
                       timezone="UTC", status="succeeded")
    client = login(staff_user("sam", "support"))
    assert 'href="/admin/dashboard/"' in client.get(reverse("admin:index")).content.decode()
    with CaptureQueriesContext(connection) as queries:
        page = client.get("/admin/dashboard/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "30.50 CNY" in html and "100.0%" in html and "<svg" in html
    assert len(queries) <= 10
    assert Client().get("/admin/dashboard/").status_code == 302  # not logged in


def test_finance_downloads_reports_others_do_not(merchant_a: Actor) -> None:
    run = Run.objects.create(channel="sandbox", business_date=dt.date(2026, 12, 4), version=1, timezone="UTC",
                             status="succeeded")
    url = reverse("admin:reconciliation_run_report", args=[run.pk, "csv"])
    finance = login(staff_user("fiona", "finance"))
    assert "report.csv" in finance.get(reverse("admin:reconciliation_run_changelist")).content.decode()
    assert finance.get(url).status_code == 200
    support = login(staff_user("sam", "support"))
    assert "report.csv" not in support.get(reverse("admin:reconciliation_run_changelist")).content.decode()
    assert support.get(url).status_code == 403


def test_resolving_a_discrepancy_is_logged_with_the_staff_user(merchant_a: Actor) -> None:
    run = Run.objects.create(channel="sandbox", business_date=dt.date(2026, 12, 4), version=1, timezone="UTC",
                             status="succeeded")
    d = Discrepancy.objects.create(run=run, kind="amount_mismatch", record="payment", out_trade_no="ord_x",
                                   currency="CNY", channel_amount=1050, internal_amount=1000)
    url = reverse("admin:reconciliation_discrepancy_changelist")
    finance = login(staff_user("fiona", "finance"))
    page = finance.get(url).content.decode()
    assert "10.50 CNY" in page and "decide" in action_names(finance.get(url))
    assert action_names(login(staff_user("sam", "support")).get(url)) == set()
    finance.post(url, {"action": "decide", "_selected_action": [d.pk], "apply": "1", "decision": "write_off",
                       "reason": "fee"})
    d.refresh_from_db()
    assert (d.status, d.resolved_by) == ("resolved", "fiona")
    row = TransitionLog.objects.get(object_type="discrepancy", object_id=str(d.pk))
    assert (row.detail["by"], row.detail["action"], row.to_state) == ("fiona", "resolve_discrepancy", "resolved")


def test_ops_redeliver_an_event_and_it_is_logged(merchant_a: Actor) -> None:
    merchant_a.merchant.default_notify_url = "https://merchant.example/hooks"
    merchant_a.merchant.save()
    order = paid(merchant_a)
    event = order.events.get()
    ops = login(staff_user("olga", "ops"))
    ops.post(reverse("admin:payments_event_changelist"), {"action": "redeliver", "_selected_action": [event.pk]})
    assert event.deliveries.count() == 2
    row = TransitionLog.objects.get(object_id=order.public_id, transition="admin_action")
    assert row.detail["action"] == "redeliver" and row.detail["event"] == event.public_id
