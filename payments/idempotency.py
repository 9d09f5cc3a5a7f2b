"""Idempotency-Key records: claim a key before the request runs, store its answer after.

The claim is an INSERT guarded by the unique (merchant, key) constraint, so of many concurrent requests with
one key exactly one runs; the others see it in flight (409) or, once it finished, get its stored answer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from payments.models import IdempotencyRecord, Merchant

# A claim older than this whose request never finished (the process died) may be taken over. Safe,
# because what the request does is itself deduplicated (merchant_order_no, merchant_refund_no).
IN_FLIGHT_TAKEOVER_S = 60


class KeyReused(Exception):
    pass


class KeyInFlight(Exception):
    pass


@dataclass(frozen=True)
class Replay:
    status: int
    body: Any


def idempotency_claim(*, merchant: Merchant, key: str, fingerprint: str) -> IdempotencyRecord | Replay:
    """Claim ``key`` for a request, or return the stored answer of the identical request made before."""
    now = timezone.now()
    expires_at = now + dt.timedelta(seconds=settings.IDEMPOTENCY_TTL_S)
    for _ in range(2):
        try:
            with transaction.atomic():
                return IdempotencyRecord.objects.create(
                    merchant=merchant, key=key, fingerprint=fingerprint, expires_at=expires_at
                )
        except IntegrityError:
            pass
        record = IdempotencyRecord.objects.filter(merchant=merchant, key=key).first()
        if record is None:
            continue  # expired and deleted meanwhile: claim again
        if record.expires_at <= now:
            IdempotencyRecord.objects.filter(pk=record.pk, expires_at__lte=now).delete()
            continue
        if record.fingerprint != fingerprint:
            raise KeyReused()
        if record.state == IdempotencyRecord.State.COMPLETED:
            return Replay(record.response_status or 200, record.response_body)
        stale_before = now - dt.timedelta(seconds=IN_FLIGHT_TAKEOVER_S)
        # Conditional UPDATE: of several requests taking over one dead claim, one wins.
        if record.created_at < stale_before and IdempotencyRecord.objects.filter(
            pk=record.pk, state=IdempotencyRecord.State.IN_FLIGHT, created_at=record.created_at
        ).update(created_at=now):
            record.created_at = now
            return record
        raise KeyInFlight()
    raise KeyInFlight()


def idempotency_complete(*, record: IdempotencyRecord, status: int, body: Any) -> None:
    IdempotencyRecord.objects.filter(pk=record.pk).update(
        state=IdempotencyRecord.State.COMPLETED, response_status=status, response_body=body
    )


def idempotency_release(*, record: IdempotencyRecord) -> None:
    """Forget a claim whose request failed on our side (5xx), so that a retry with the key runs again."""
    IdempotencyRecord.objects.filter(pk=record.pk, state=IdempotencyRecord.State.IN_FLIGHT).delete()


def idempotency_purge(*, now: dt.datetime) -> int:
    return IdempotencyRecord.objects.filter(expires_at__lt=now).delete()[0]
