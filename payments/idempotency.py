"""Idempotency-Key records: one answer per (merchant, key), kept for at least 24 hours.

While a request with a key runs, it holds a PostgreSQL advisory lock on that key (session-level, so it
can be held across a channel call, outside any transaction). A concurrent request with the same key fails
to take the lock and is told the key is in flight; one that comes after finds the stored answer. The lock
dies with its connection, so a process that crashes mid-request leaves no stale claim behind.
(Session advisory locks need a session-pooled or direct connection, not a transaction-mode pooler.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

from payments.models import IdempotencyRecord, Merchant


class KeyReused(Exception):
    pass


class KeyInFlight(Exception):
    pass


@dataclass(frozen=True)
class Replay:
    status: int
    body: Any


@contextlib.contextmanager
def idempotency_key_lock(*, merchant: Merchant, key: str) -> Iterator[None]:
    """Hold the key's lock for the duration of the block, or raise ``KeyInFlight``."""
    lock_name = f"idempotency:{merchant.pk}:{key}"
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [lock_name])
        if not cursor.fetchone()[0]:
            raise KeyInFlight()
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [lock_name])
        except DatabaseError:
            connection.close()  # a broken connection releases the lock on the server; start afresh


def idempotency_lookup(*, merchant: Merchant, key: str, fingerprint: str) -> Replay | None:
    """The stored answer for the key (call with the key's lock held), or None if the request must run."""
    record = IdempotencyRecord.objects.filter(merchant=merchant, key=key).first()
    if record is None:
        return None
    if record.expires_at <= timezone.now():
        record.delete()
        return None
    if record.fingerprint != fingerprint:
        raise KeyReused()
    return Replay(record.response_status, record.response_body)


def idempotency_save(*, merchant: Merchant, key: str, fingerprint: str, status: int, body: Any) -> None:
    IdempotencyRecord.objects.create(
        merchant=merchant, key=key, fingerprint=fingerprint, response_status=status, response_body=body,
        expires_at=timezone.now() + dt.timedelta(seconds=settings.IDEMPOTENCY_TTL_S),
    )


def idempotency_purge(*, now: dt.datetime) -> int:
    return IdempotencyRecord.objects.filter(expires_at__lt=now).delete()[0]
