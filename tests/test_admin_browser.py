"""The admin in a real browser: Playwright driving Debian's Chromium, headless, against the live server, with the
sandbox simulator as the channel. Ops log in, find an order by the merchant's order number, re-query it and read
its story; support see no action; finance download a reconciliation CSV. Screenshots of each page are saved in
tests/artifacts/ (git ignores it; CI keeps the folder of its clone), and the path is printed.

Chromium comes from Debian (`apt-get install chromium`; .ci/run installs it), never from `playwright install`.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

from payments.models import ChannelNotification, Order, TransitionLog
from reconciliation.models import Discrepancy, Run
from tests.admin_support import pay_at_channel, pending_order, sandbox, staff_groups, staff_user
from tests.conftest import make_actor
from tests.e2e.conftest import wait_until

__all__ = ["sandbox"]

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PASSWORD = "browser-test-password"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    folder = ARTIFACTS / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"\nscreenshots: {folder}")
    return folder


def log_in(browser, live_server, username: str):
    page = browser.new_context(viewport={"width": 1680, "height": 1000}, accept_downloads=True).new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#ops-links")
    return page


@pytest.mark.django_db(transaction=True)
def test_ops_support_and_finance_in_the_admin(sandbox, live_server, browser, artifacts: Path) -> None:
    settings.TRACE_URL_TEMPLATE = "http://jaeger:16686/trace/{trace_id}"
    settings.PUBLIC_BASE_URL = live_server.url  # the simulator's notification reaches our callback endpoint
    try:
        run_scenario(sandbox, live_server, browser, artifacts)
    finally:
        # The ORM calls made while Playwright's loop runs have a connection of their own: close it, or the test
        # database cannot be dropped at the end of the session.
        connections.close_all()
        settings.TRACE_URL_TEMPLATE = ""
        settings.PUBLIC_BASE_URL = "http://127.0.0.1:9"


def run_scenario(sandbox, live_server, browser, artifacts: Path) -> None:
    staff_groups()
    for name, group in (("olga", "ops"), ("sam", "support"), ("fiona", "finance")):
        staff_user(name, group, PASSWORD)
    shop = make_actor("Teahouse")
    order = pending_order(shop.merchant, "SHOP-1001", amount=1050)
    pending_order(shop.merchant, "SHOP-1002", amount=2500)
    Order.objects.filter(pk=order.pk).update(trace_id="4bf92f3577b34da6a3ce929d0e0e4736")  # as the API's create
    pay_at_channel(order)  # paid at the channel; the order here is still pending
    # The channel's notification is verified and stored; no worker applies it in this test.
    wait_until(lambda: ChannelNotification.objects.filter(order=order).exists(), what="the channel's notification")
    run = Run.objects.create(channel="sandbox", business_date=dt.date.today() - dt.timedelta(days=1), version=1,
                             timezone="UTC", status="succeeded", bill_rows=2, finished_at=dt.datetime.now(dt.UTC))
    Discrepancy.objects.create(run=run, kind="missing_channel", record="payment", out_trade_no=order.public_id,
                               currency="CNY", internal_amount=1050, internal_status="succeeded")

    # -- ops: find the order by the merchant's number, re-query it, read its story ------------------------------
    ops = log_in(browser, live_server, "olga")
    ops.screenshot(path=artifacts / "01-ops-index.png", full_page=True)
    ops.get_by_role("link", name="Orders", exact=True).click()
    ops.fill("#searchbar", "SHOP-1001")
    ops.press("#searchbar", "Enter")
    ops.wait_for_selector("#result_list")
    rows = ops.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert "10.50 CNY" in rows.first.inner_text() and "pending" in rows.first.inner_text().lower()
    ops.check("#result_list tbody tr input.action-select")
    ops.select_option("select[name=action]", "requery")
    ops.screenshot(path=artifacts / "02-ops-order-found.png", full_page=True)
    ops.click("button[name=index]")
    ops.wait_for_selector("ul.messagelist")
    assert "pending → succeeded" in ops.inner_text("ul.messagelist")
    ops.screenshot(path=artifacts / "03-ops-requeried.png", full_page=True)
    ops.locator("#result_list a", has_text=order.public_id).click()
    ops.wait_for_selector("#story")
    story = ops.inner_text("#story")
    for line in ("created (created), 10.50 CNY via sandbox", "created → pending (mark_pending)",
                 "pending → succeeded (mark_succeeded)", "olga (admin)", "requery: pending → succeeded",
                 "event order.succeeded", "sandbox notification"):
        assert line in story, line
    assert ops.locator("a", has_text="trace").count() >= 1
    assert ops.locator(".order-actions button", has_text="Refund").count() == 1
    ops.screenshot(path=artifacts / "04-ops-order-story.png", full_page=True)
    ops.goto(f"{live_server.url}/admin/dashboard/")
    ops.wait_for_selector("#dashboard svg")
    assert "sandbox" in ops.inner_text("#dashboard")
    ops.screenshot(path=artifacts / "05-ops-dashboard.png", full_page=True)
    assert Order.objects.get(pk=order.pk).status == "succeeded"
    assert TransitionLog.objects.filter(object_id=order.public_id, transition="mark_succeeded",
                                        detail__by="olga").exists()

    # -- support: the same pages, no action anywhere --------------------------------------------------------------
    support = log_in(browser, live_server, "sam")
    support.goto(f"{live_server.url}/admin/payments/order/?q=SHOP-1001")
    support.wait_for_selector("#result_list")
    assert support.locator("select[name=action]").count() == 0
    assert support.locator("input.action-select").count() == 0
    support.screenshot(path=artifacts / "06-support-orders.png", full_page=True)
    support.locator("#result_list a", has_text=order.public_id).click()
    support.wait_for_selector("#story")
    assert support.locator(".order-actions").count() == 0
    assert support.locator("button", has_text="Redeliver").count() == 0
    support.screenshot(path=artifacts / "07-support-order-story.png", full_page=True)
    support.goto(f"{live_server.url}/admin/reconciliation/run/")
    assert support.locator("a.report-csv").count() == 0

    # -- finance: download the run's CSV ---------------------------------------------------------------------------
    finance = log_in(browser, live_server, "fiona")
    finance.get_by_role("link", name="Runs", exact=True).click()
    finance.wait_for_selector("#result_list")
    finance.screenshot(path=artifacts / "08-finance-runs.png", full_page=True)
    with finance.expect_download() as download:
        finance.click("a.report-csv")
    saved = artifacts / download.value.suggested_filename
    download.value.save_as(saved)
    text = saved.read_text(encoding="utf-8-sig")
    assert saved.suffix == ".csv" and order.public_id in text, text[:500]
    assert finance.locator("select[name=action]").count() == 0  # runs have no actions
