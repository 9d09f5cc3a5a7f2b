"""A worker survives Redis going away (payments_site/broker.py): a channel whose connection Celery's consumer has
collected fails with a connection error, which kombu and Celery handle ("Couldn't ack", a quiet close), not with
an AttributeError that Celery takes for unrecoverable. The whole path, Redis stopped under load, is make chaos's
scenario 3."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings
from kombu import Connection
from kombu.transport import redis as kombu_redis

from payments_site.broker import RedisTransport


def channel_of_collected_connection(transport: type) -> kombu_redis.Channel:
    connection = Connection(settings.CELERY_BROKER_URL, transport=transport)
    channel = connection.channel()
    connection.collect()  # what Celery's consumer does when the connection breaks: the transport forgets it
    return channel


def test_a_channel_of_a_collected_connection_fails_with_a_connection_error() -> None:
    channel = channel_of_collected_connection(RedisTransport)
    with pytest.raises(redis.ConnectionError):
        channel._connparams()  # what an ack or a close needs when the channel's pool is gone
    assert redis.ConnectionError in kombu_redis.Transport.connection_errors


def test_the_stock_transport_fails_there_with_an_attribute_error() -> None:
    # What payments_site/broker.py is for: once kombu fails here as above, it can go.
    channel = channel_of_collected_connection(kombu_redis.Transport)
    with pytest.raises(AttributeError):
        channel._connparams()
