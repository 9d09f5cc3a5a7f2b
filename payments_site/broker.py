"""Kombu's Redis transport, made to survive the loss of Redis (``broker_transport`` in celeryconfig).

When the connection to Redis breaks, Celery 5.7's consumer collects it: the transport forgets its client (the
``kombu.Connection``) and the consumer reconnects on a new one. But the old channel is still used afterwards:
Celery closes the collected connection once more, and a task that was running acknowledges its message on the
channel it came from. Each time kombu asks the forgotten client (or the closed channel's transport) for its
host (``'NoneType' object has no attribute 'hostname'``, or ``… 'client'``), and an ``AttributeError`` is no
connection error: Celery takes it for an unrecoverable one, and the worker stops, or hangs in its shutdown
with tasks unacknowledged (make chaos, scenario 3, with the worker's log). Here such a channel answers what it
is, a channel without a connection, with the connection error that kombu and Celery handle: the close is
skipped, and the acknowledgement is given up ("Couldn't ack") so that Redis re-delivers the message once its
visibility timeout passes; tasks are safe to run twice.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class RedisChannel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker connection of this channel was closed")
        return super()._connparams(asynchronous=asynchronous)


class RedisTransport(kombu_redis.Transport):
    Channel = RedisChannel
