"""Idempotency-Key records: one answer per (merchant, key), kept for at least 24 hours.

Two ways to make sure a key's request runs once:

- A request that only writes to the database stores its answer with its own rows, in the same transaction
  (``Claim``). The unique constraint on (merchant, key) decides: a concurrent request with the same key
  waits on the index until the first commits, then fails and replays the stored answer. Nothing is read
  before the work, so a new key costs no extra round trip.
- A request that calls a channel cannot hold a transaction, so it holds a PostgreSQL advisory lock on the
  key instead (session-level, so it can be held across the call). A concurrent request fails to take the
  lock and is told the key is in flight; one that comes after finds the stored answer. The lock dies with
  its connection, so a process that crashes mid-request leaves no stale claim behind. (Session advisory
  locks need a session-pooled or direct connection, not a transaction-mode pooler.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from payments import db
from payments.models import IdempotencyRecord, Merchant


class KeyReused(Exception):
    pass


class KeyInFlight(Exception):
    pass


class KeyAnswered(Exception):
    """Storing an answer found one already there (or one being committed): replay that one instead."""


KEY_CONSTRAINT = "idempotency_merchant_key_uniq"


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


@dataclass
class Claim:
    """A request's Idempotency-Key, for a service that stores the request's answer with its own rows.

    ``render`` is the caller's answer for the object the service creates, as (status, body): the service
    stores it without knowing what it is, and the caller answers the same."""

    merchant: Merchant
    key: str
    fingerprint: str
    render: Callable[[Any], tuple[int, Any]]
    record: IdempotencyRecord | None = None

    def record_for(self, obj: Any) -> IdempotencyRecord:
        """The row that stores the answer for ``obj`` as the key's answer; the service writes it."""
        status, body = self.render(obj)
        self.record = _record(merchant=self.merchant, key=self.key, fingerprint=self.fingerprint, status=status,
                              body=body)
        return self.record

    @property
    def answered(self) -> bool:
        return self.record is not None and self.record.pk is not None


def is_key_conflict(exc: IntegrityError) -> bool:
    return db.violated_constraint(exc) == KEY_CONSTRAINT


def _record(*, merchant: Merchant, key: str, fingerprint: str, status: int, body: Any) -> IdempotencyRecord:
    return IdempotencyRecord(
        merchant=merchant, key=key, fingerprint=fingerprint, response_status=status, response_body=body,
        expires_at=timezone.now() + dt.timedelta(seconds=settings.IDEMPOTENCY_TTL_S),
    )


def idempotency_save(*, merchant: Merchant, key: str, fingerprint: str, status: int, body: Any) -> None:
    """Store the key's answer, or raise ``KeyAnswered`` if it has one."""
    try:
        with transaction.atomic():  # inside a caller's transaction, a savepoint: a conflict must not abort it
            _record(merchant=merchant, key=key, fingerprint=fingerprint, status=status, body=body).save()
    except IntegrityError as exc:
        if is_key_conflict(exc):
            raise KeyAnswered() from None
        raise


def idempotency_purge(*, now: dt.datetime) -> int:
    return IdempotencyRecord.objects.filter(expires_at__lt=now).delete()[0]
