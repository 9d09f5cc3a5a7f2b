"""Races on real threads with real database connections (issue 12): what many requests at once leave behind.

PostgreSQL here has ``max_connections = 100``, shared with other test runs, and each thread holds a connection
while it runs. So no test opens more than ``THREADS`` (30) at once: the requests of a test are shared out over
30 threads released together behind a barrier (``tests.concurrency.run_pooled``), each taking the next request
when it is done with one. 30 requests in flight at once is what makes the races; 100 threads would add waiting
on connections, not contention. The channel is the sandbox simulator, a real process reached over HTTP.

Also here: the 500 once seen on ``POST /orders/{id}/close`` with an Idempotency-Key during the schemathesis run.
Concurrent closes with one key, with different keys, and racing the charge all answer as they should; the 500
was a close whose key got an answer from *another operation* while the close was at the channel: schemathesis
sends the same generated key to every operation, and ``StoredWithRows`` (order and refund create) does not take
the key's advisory lock that ``HeldByLock`` (close, redeliver, rotate) holds. Storing the close's answer then
raised ``KeyAnswered``, which nothing caught. ``HeldByLock`` now answers what that key answered (409
``idempotency_key_reused`` for another request): the last test here.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
from django.conf import settings
from django.db.models import Sum
from django.test import Client

from channels.base import RefundResult, RefundStatus
from channels.sandbox import signing
from channels.sandbox.adapter import SandboxChannel
from payments import services
from payments.models import ChannelNotification, Event, Order, Refund, TransitionLog
from tests.admin_support import pay_at_channel, pending_order, sandbox
from tests.concurrency import run_pooled

THREADS = 30
ORDERS = "/api/v1/orders"
BODY = {"merchant_order_no": "C-1", "amount": 1000, "currency": "CNY", "channel": "sandbox"}

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["sandbox"]  # the simulator's fixture, for the tests below


@pytest.fixture
def merchant_a(merchant_a):
    """Merchant A without its rate limit (100 a second by default): these tests send more, on purpose."""
    merchant_a.merchant.rate_limit_per_s = 100_000
    merchant_a.merchant.save(update_fields=["rate_limit_per_s"])
    return merchant_a


def signed_notification(message: dict) -> tuple[dict[str, str], bytes]:
    body = json.dumps(message).encode()
    timestamp = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        signing.TIMESTAMP_HEADER: timestamp,
        signing.SIGNATURE_HEADER: signing.sign_message(settings.SANDBOX_SECRET, timestamp, body),
    }, body


def paid_notification(order: Order, notification_id: str = "sbx_n_race") -> tuple[dict[str, str], bytes]:
    return signed_notification({
        "id": notification_id, "type": "trade.succeeded", "created_at": "2026-11-27T00:00:00Z",
        "data": {"out_trade_no": order.public_id, "status": "SUCCEEDED", "amount": order.amount,
                 "currency": order.currency, "trade_no": "sbx_t_race", "paid_at": "2026-11-27T00:00:00Z"},
    })


def post_callback(headers: dict[str, str], body: bytes):
    return Client().post("/callbacks/sandbox", body, content_type="application/json",
                         headers={k: v for k, v in headers.items() if k != "Content-Type"})


def close(actor, order: Order, key: str | None = None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return actor.client().post(f"{ORDERS}/{order.public_id}/close", format="json", **headers)


def transitions(obj: Order | Refund) -> list[str]:
    return list(TransitionLog.objects.filter(object_id=obj.public_id).values_list("transition", flat=True))


# -- one Idempotency-Key, 100 creates ---------------------------------------------------------------------


def test_100_creates_with_one_key_make_one_order(merchant_a) -> None:
    answers = run_pooled(100, THREADS, lambda i: merchant_a.client().post(ORDERS, BODY, format="json",
                                                                         HTTP_IDEMPOTENCY_KEY="one-key"))

    order = merchant_a.merchant.orders.get()  # exactly one
    originals = [a for a in answers if a.status_code == 201 and "Idempotent-Replayed" not in a]
    replays = [a for a in answers if a.get("Idempotent-Replayed") == "true"]
    in_flight = [a for a in answers if a.status_code == 409]
    assert len(originals) == 1 and originals[0].json()["id"] == order.public_id
    assert all(a.status_code == 201 and a.json() == originals[0].json() for a in replays)
    assert all(a.json()["error"]["code"] == "idempotency_key_in_flight" for a in in_flight)
    assert len(originals) + len(replays) + len(in_flight) == 100, Counter(a.status_code for a in answers)
    assert transitions(order) == ["create"]


# -- 50 refunds, a close and the payment's notification on one order ---------------------------------------


def test_refunds_racing_a_close_and_the_payment_notification_leave_a_consistent_order(
    sandbox, merchant_a
) -> None:
    # The payer has paid at the channel; its notification, the merchant's close and 50 refunds of 100 (five
    # times what can be refunded) arrive at once. The close asks the channel, which says paid.
    order = pending_order(merchant_a.merchant, "C-1", amount=1000)
    pay_at_channel(order)
    headers, body = paid_notification(order)
    close_at, notify_at = 7, 15  # among the first 30 requests: all released together

    def request(i: int):
        if i == close_at:
            return close(merchant_a, order)
        if i == notify_at:
            row, accepted = services.notification_receive(channel="sandbox", headers=headers, body=body)
            assert accepted
            services.notification_apply(notification_id=row.pk)
            return None
        return merchant_a.client().post(f"{ORDERS}/{order.public_id}/refunds",
                                        {"merchant_refund_no": f"R-{i}", "amount": 100}, format="json")

    answers = run_pooled(52, THREADS, request)

    refunds = [a for i, a in enumerate(answers) if i not in (close_at, notify_at)]
    statuses = Counter(a.status_code for a in refunds)
    assert set(statuses) <= {201, 409, 422}, statuses  # no 500, nothing undocumented
    assert all(a.json()["error"]["code"] == "order_state" for a in refunds if a.status_code == 409)
    assert all(a.json()["error"]["code"] == "refund_exceeds_amount" for a in refunds if a.status_code == 422)
    assert answers[close_at].status_code == 409 and answers[close_at].json()["error"]["code"] == "order_state"

    order.refresh_from_db()
    assert order.status == "succeeded" and not order.attention
    assert transitions(order).count("mark_succeeded") == 1
    assert Event.objects.filter(order=order, type="order.succeeded").count() == 1
    committed = order.refunds.exclude(status="failed").aggregate(total=Sum("amount"))["total"] or 0
    assert committed == 100 * statuses[201] <= order.amount
    if statuses[409] < 40:  # the payment was known early enough for the refunds to reach the limit
        assert committed == order.amount

    # The channel then confirms every refund, concurrently too: the order ends as its refunds say.
    refunds_made = list(order.refunds.values_list("pk", "public_id"))
    run_pooled(len(refunds_made), THREADS, lambda i: services.refund_apply_result(
        refund_id=refunds_made[i][0], result=RefundResult(refunds_made[i][1], RefundStatus.SUCCEEDED, amount=100),
        source="callback"))
    order.refresh_from_db()
    assert order.amount_refunded == committed
    assert order.status == {0: "succeeded", order.amount: "refunded"}.get(committed, "partially_refunded")


# -- 100 copies of one notification -----------------------------------------------------------------------


def test_100_copies_of_one_notification_make_one_row_one_transition_one_event(sandbox, merchant_a) -> None:
    # The channel retries, and a proxy duplicates: each copy is POSTed to the callback and, as the worker would,
    # applied at once by the thread that received it.
    order = pending_order(merchant_a.merchant, "C-1")
    headers, body = paid_notification(order, notification_id="sbx_n_copies")

    def deliver(i: int) -> int:
        answer = post_callback(headers, body)
        if answer.status_code == 200:
            row = ChannelNotification.objects.get(channel_notification_id="sbx_n_copies")
            services.notification_apply(notification_id=row.pk)
        return answer.status_code

    assert run_pooled(100, THREADS, deliver) == [200] * 100

    row = ChannelNotification.objects.get(channel="sandbox")  # one row
    assert (row.channel_notification_id, row.state) == ("sbx_n_copies", "processed")
    order.refresh_from_db()
    assert order.status == "succeeded"
    assert transitions(order) == ["create", "mark_pending", "mark_succeeded"]
    assert list(Event.objects.filter(order=order).values_list("type", flat=True)) == ["order.pending",
                                                                                    "order.succeeded"]


# -- the close, under an Idempotency-Key and against the charge (the schemathesis 500) ----------------------


def test_concurrent_closes_with_one_key_close_once(sandbox, merchant_a) -> None:
    order = pending_order(merchant_a.merchant, "C-1")

    answers = run_pooled(20, 20, lambda i: close(merchant_a, order, key="close-key"))

    statuses = Counter((a.status_code, a.get("Idempotent-Replayed")) for a in answers)
    originals = [a for a in answers if a.status_code == 200 and "Idempotent-Replayed" not in a]
    assert len(originals) == 1 and originals[0].json()["status"] == "closed", statuses
    for answer in answers:
        if answer.status_code == 409:
            assert answer.json()["error"]["code"] == "idempotency_key_in_flight"
        else:
            assert answer.status_code == 200 and answer.json() == originals[0].json(), statuses
    assert transitions(order).count("mark_closed") == 1
    assert sandbox.trade(order.public_id)["status"] == "CLOSED"


def test_concurrent_closes_with_different_keys_close_once(sandbox, merchant_a) -> None:
    order = pending_order(merchant_a.merchant, "C-1")

    answers = run_pooled(20, 20, lambda i: close(merchant_a, order, key=f"close-{i}"))

    # Each close that found the order open closed it (at the channel, then here) or found it closed: 200.
    # One that read it closed already is refused: closing a closed order is 409 order_state.
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {200, 409} and statuses[200] >= 1, statuses
    assert all(a.json()["status"] == "closed" for a in answers if a.status_code == 200)
    assert all(a.json()["error"]["code"] == "order_state" for a in answers if a.status_code == 409)
    assert transitions(order).count("mark_closed") == 1
    assert Event.objects.filter(order=order, type="order.closed").count() == 1


def test_closes_racing_the_charge_leave_no_payable_trade(sandbox, merchant_a) -> None:
    order, _ = services.order_create(merchant=merchant_a.merchant, merchant_order_no="C-1", amount=1000,
                                     currency="CNY", channel="sandbox")

    def request(i: int):
        if i == 0:
            return services.order_charge(order_id=order.pk)
        return close(merchant_a, order, key=f"close-{i % 2}")

    answers = run_pooled(9, 9, request)

    closes = answers[1:]
    assert all(a.status_code in (200, 409) for a in closes), [a.status_code for a in closes]
    codes = {a.json()["error"]["code"] for a in closes if a.status_code == 409}
    assert codes <= {"order_state", "idempotency_key_in_flight"}
    order.refresh_from_db()
    assert order.status == "closed"
    # The charge's trade, if it reached the channel, was closed after it: nobody can pay it.
    assert sandbox.trade(order.public_id).get("status") in (None, "CLOSED")


def test_a_close_whose_key_is_answered_by_another_request_meanwhile_is_409_not_500(
    sandbox, merchant_a, monkeypatch
) -> None:
    # Deterministic form of the schemathesis race: while the close is at the channel (holding the key's lock),
    # a create with the same key stores its answer; creates do not take that lock, the key's unique row decides.
    order = pending_order(merchant_a.merchant, "C-1")
    real_close = SandboxChannel.close_trade
    creates = []

    def close_trade(self, *, out_trade_no: str):
        def create() -> None:
            try:
                creates.append(merchant_a.client().post(ORDERS, {**BODY, "merchant_order_no": "C-2"}, format="json",
                                                        HTTP_IDEMPOTENCY_KEY="shared-key"))
            finally:
                from django.db import connection

                connection.close()

        thread = threading.Thread(target=create)
        thread.start()
        thread.join()
        return real_close(self, out_trade_no=out_trade_no)

    monkeypatch.setattr(SandboxChannel, "close_trade", close_trade)

    answer = close(merchant_a, order, key="shared-key")

    assert creates[0].status_code == 201
    assert answer.status_code == 409, answer.content
    assert answer.json()["error"]["code"] == "idempotency_key_reused"
    again = close(merchant_a, order, key="shared-key")  # the key's answer is the create's, for another request
    assert again.status_code == 409 and again.json()["error"]["code"] == "idempotency_key_reused"
    order.refresh_from_db()
    assert order.status == "closed"  # the close itself happened: a new key finds the order closed
