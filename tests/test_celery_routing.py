"""Each kind of work goes to its own queue, and only there."""

from __future__ import annotations

import pytest
from django.conf import settings

from payments_site.celery import app

EXPECTED = {
    "payments.tasks.charge_order": "charges",
    "payments.tasks.query_order": "charges",
    "payments.tasks.expire_order": "charges",
    "payments.tasks.sweep_created_orders": "charges",
    "payments.tasks.process_notification": "callbacks",
    "payments.tasks.refund_order": "refunds",
}


@pytest.mark.parametrize(("task", "queue"), EXPECTED.items())
def test_task_is_routed_to_its_queue(task: str, queue: str) -> None:
    route = app.amqp.router.route({}, task)
    assert route["queue"].name == queue
    assert route["queue"].routing_key == queue


def test_queues_do_not_share_a_binding() -> None:
    # A queue bound with another queue's exchange and key would receive that queue's messages too.
    bindings = [(q.exchange.name, q.routing_key) for q in app.conf.task_queues]
    assert len(set(bindings)) == len(bindings) == 5
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    # Redis re-delivers unacknowledged messages after the visibility timeout: it must outlast any retry delay.
    assert app.conf.broker_transport_options["visibility_timeout"] > settings.TASK_RETRY_BACKOFF_MAX_S


def test_a_sweep_declares_its_queue_again_after_redis_lost_the_binding() -> None:
    # `make chaos`, Redis FLUSHALL: the binding key went, no connection dropped, and every message sent to the queue
    # was dropped (Celery declares a queue once per connection) until a worker restarted.
    import redis

    from payments import tasks

    with app.connection_for_write() as conn:
        if conn.transport.driver_type != "redis":
            pytest.skip("the broker is not Redis")
        client = redis.Redis.from_url(app.conf.broker_url)
    key = "_kombu.binding.webhooks"
    client.delete(key)
    tasks._declare_queue_of(tasks.deliver_webhook)
    assert client.smembers(key)
