"""Merchants, keys, orders, refunds and the records that make the money path auditable.

Money is an integer of minor units plus an ISO 4217 currency. Order and refund states change only through
the named django-fsm transitions below, fired by ``payments.services`` on a locked row.
"""

from __future__ import annotations

import datetime as dt
import secrets
import string
from collections.abc import Callable

from django.conf import settings
from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.db.models import F, Q
from django_fsm import FSMField, FSMModelMixin, transition

_ALPHABET = string.ascii_letters + string.digits


def public_id(prefix: str) -> str:
    """An opaque id such as ``ord_3Xk…``: 4 + 24 characters, within the channels' 32-character limit.

    Uniform over the 62 characters: bytes from 248 up are dropped, so that ``byte % 62`` has no bias. One
    read of the system's randomness instead of one per character (``secrets.choice``), as ids are made for
    every order."""
    chars: list[str] = []
    while len(chars) < 24:
        chars += [_ALPHABET[byte % 62] for byte in secrets.token_bytes(32) if byte < 248]
    return prefix + "".join(chars[:24])


# Module-level so that migrations can refer to them.
def new_merchant_id() -> str:
    return public_id("mch_")


def new_order_id() -> str:
    return public_id("ord_")


def new_refund_id() -> str:
    return public_id("rfd_")


def new_event_id() -> str:
    return public_id("evt_")


def _id_field(default: Callable[[], str]) -> models.CharField:
    # Unique through ``_public_id_unique`` in Meta, not ``unique=True``: on PostgreSQL that also builds a
    # second, ``varchar_pattern_ops`` index for LIKE queries, which nothing runs and every INSERT pays for.
    return models.CharField(max_length=32, editable=False, default=default)


def _public_id_unique(model: str) -> models.UniqueConstraint:
    return models.UniqueConstraint(fields=["public_id"], name=f"{model}_public_id_uniq")


class Merchant(models.Model):
    public_id = _id_field(new_merchant_id)
    name = models.CharField(max_length=200, unique=True)
    per_order_limit = models.BigIntegerField(default=settings.DEFAULT_PER_ORDER_LIMIT)
    rate_limit_per_s = models.PositiveIntegerField(default=settings.DEFAULT_RATE_LIMIT_PER_S)
    default_notify_url = models.URLField(max_length=500, blank=True)
    webhook_secret = models.CharField(max_length=100, editable=False)
    # After a rotation the previous secret signs too (a second signature) until previous_webhook_secret_until.
    previous_webhook_secret = models.CharField(max_length=100, blank=True, editable=False)
    previous_webhook_secret_until = models.DateTimeField(null=True, blank=True, editable=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    # A merchant is the authenticated principal of an API request (``request.user``).
    is_authenticated = True

    class Meta:
        constraints = [_public_id_unique("merchant")]

    def __str__(self) -> str:
        return f"{self.name} ({self.public_id})"


class ApiKey(models.Model):
    """A merchant's secret key. Only its SHA-256 is stored: keys are 192-bit random, so a fast hash is enough
    (as with Stripe or GitHub tokens), and lookups stay one indexed equality."""

    merchant = models.ForeignKey(Merchant, on_delete=models.CASCADE, related_name="api_keys")
    prefix = models.CharField(max_length=16, help_text="The first characters, to recognise the key.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.merchant.name})"


class OrderStatus(models.TextChoices):
    CREATED = "created"
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CLOSED = "closed"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


S = OrderStatus
OPEN_ORDER_STATES = [S.CREATED, S.PENDING]
PAID_ORDER_STATES = [S.SUCCEEDED, S.PARTIALLY_REFUNDED]


class Order(FSMModelMixin, models.Model):
    public_id = _id_field(new_order_id)
    # Every query by merchant starts with one of the indexes below: a separate FK index would only be paid
    # for on every insert.
    merchant = models.ForeignKey(Merchant, on_delete=models.PROTECT, related_name="orders", db_index=False)
    merchant_order_no = models.CharField(max_length=64)
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    channel = models.CharField(max_length=16)
    # The channel account the order was placed with (its app id, mchid or merchant id), chosen at the first charge
    # and kept: queries, closes, refunds and notifications of the order go to that account. Empty: the primary.
    channel_account = models.CharField(max_length=64, blank=True)
    status = FSMField(default=S.CREATED, choices=OrderStatus.choices, protected=True)  # see order_status_updated
    description = models.CharField(max_length=127, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    notify_url = models.URLField(max_length=500, blank=True)
    pay_url = models.URLField(max_length=1000, blank=True)
    channel_trade_no = models.CharField(max_length=64, blank=True)
    amount_refunded = models.BigIntegerField(default=0)
    failure_code = models.CharField(max_length=64, blank=True)
    failure_message = models.CharField(max_length=255, blank=True)
    # Work the order needs from ops (retries exhausted, paid after close); empty when none.
    attention = models.CharField(max_length=64, blank=True)  # see order_attention
    charge_attempts = models.PositiveIntegerField(default=0)
    trace_id = models.CharField(max_length=32, blank=True, help_text="Trace of the request that created it.")
    # As requested (seconds), so that a repeated create can be compared with the first; expires_at is derived.
    expires_in = models.PositiveIntegerField(default=900)
    expires_at = models.DateTimeField()
    paid_at = models.DateTimeField(null=True, blank=True)
    last_channel_check_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            _public_id_unique("order"),
            models.UniqueConstraint(fields=["merchant", "merchant_order_no"], name="order_merchant_order_no_uniq"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="order_amount_positive"),
            models.CheckConstraint(
                condition=Q(amount_refunded__gte=0) & Q(amount_refunded__lte=F("amount")),
                name="order_amount_refunded_within_amount",
            ),
        ]
        indexes = [
            models.Index(fields=["merchant", "-id"], name="order_merchant_recent"),
            models.Index(fields=["status", "updated_at"], name="order_status_updated"),
            # Only the few orders that need ops are in it, so creating an order does not touch it.
            models.Index(fields=["attention"], condition=~Q(attention=""), name="order_attention"),
            # Reconciliation's day of a channel; an unpaid order (every create) has no entry in it.
            models.Index(fields=["channel", "paid_at"], condition=Q(paid_at__isnull=False), name="order_channel_paid"),
            # The admin's day (its dashboard, the lists' dates): rows are written in created_at order, so a BRIN
            # index serves a day's range for next to nothing on each insert.
            BrinIndex(fields=["created_at"], name="order_created_brin"),
        ]
        # The admin's actions (payments/admin.py); the staff groups hold them (payments/staff.py). The breakers
        # have no model of their own: forcing one is an order operation here.
        permissions = [
            ("operate_order", "Can re-query, close, retry and refund orders and decide on late payments"),
            ("operate_breaker", "Can force a channel circuit breaker open or closed"),
        ]

    def __str__(self) -> str:
        return self.public_id

    @transition(field=status, source=S.CREATED, target=S.PENDING)
    def mark_pending(self, *, pay_url: str, channel_trade_no: str = "") -> None:
        self.pay_url = pay_url
        self.channel_trade_no = channel_trade_no or self.channel_trade_no

    @transition(field=status, source=OPEN_ORDER_STATES, target=S.SUCCEEDED)
    def mark_succeeded(self, *, paid_at: dt.datetime, channel_trade_no: str) -> None:
        self.paid_at = paid_at
        self.channel_trade_no = channel_trade_no or self.channel_trade_no

    @transition(field=status, source=OPEN_ORDER_STATES, target=S.FAILED)
    def mark_failed(self, *, code: str, message: str) -> None:
        self.failure_code = code
        self.failure_message = message[:255]

    @transition(field=status, source=OPEN_ORDER_STATES, target=S.CLOSED)
    def mark_closed(self) -> None:
        pass

    @transition(field=status, source=[S.CLOSED, S.FAILED], target=S.SUCCEEDED)
    def accept_late_payment(self, *, paid_at: dt.datetime, channel_trade_no: str) -> None:
        """Ops' explicit decision to keep money that arrived after the order was closed or failed (API.md)."""
        self.paid_at = paid_at
        self.channel_trade_no = channel_trade_no or self.channel_trade_no
        self.attention = ""

    @transition(field=status, source=[S.CLOSED, S.FAILED], target=None)
    def record_late_payment_refund(self, *, amount: int) -> None:
        """A late payment returned in full by ops' decision: the order keeps its state (API.md)."""
        self.amount_refunded += amount
        self.attention = ""

    @transition(field=status, source=PAID_ORDER_STATES, target=S.PARTIALLY_REFUNDED)
    def record_partial_refund(self, *, amount: int) -> None:
        self.amount_refunded += amount

    @transition(field=status, source=PAID_ORDER_STATES, target=S.REFUNDED)
    def record_full_refund(self, *, amount: int) -> None:
        self.amount_refunded += amount


class RefundState(models.TextChoices):
    PENDING = "pending"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


R = RefundState


class Refund(FSMModelMixin, models.Model):
    public_id = _id_field(new_refund_id)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="refunds")
    merchant_refund_no = models.CharField(max_length=64)
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = FSMField(default=R.PENDING, choices=RefundState.choices, protected=True, db_index=True)
    reason = models.CharField(max_length=127, blank=True)
    channel_refund_no = models.CharField(max_length=64, blank=True)
    failure_code = models.CharField(max_length=64, blank=True)
    failure_message = models.CharField(max_length=255, blank=True)
    attention = models.CharField(max_length=64, blank=True, db_index=True)
    submit_attempts = models.PositiveIntegerField(default=0)
    trace_id = models.CharField(max_length=32, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    succeeded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            _public_id_unique("refund"),
            models.UniqueConstraint(fields=["order", "merchant_refund_no"], name="refund_order_refund_no_uniq"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="refund_amount_positive"),
        ]
        indexes = [
            models.Index(fields=["status", "updated_at"], name="refund_status_updated"),
            # Reconciliation's day; a refund has an entry once it succeeded.
            models.Index(fields=["succeeded_at"], condition=Q(succeeded_at__isnull=False), name="refund_succeeded"),
        ]

    def __str__(self) -> str:
        return self.public_id

    @transition(field=status, source=R.PENDING, target=R.PROCESSING)
    def mark_processing(self, *, channel_refund_no: str = "") -> None:
        self.channel_refund_no = channel_refund_no or self.channel_refund_no

    @transition(field=status, source=R.PROCESSING, target=R.SUCCEEDED)
    def mark_succeeded(self, *, succeeded_at: dt.datetime, channel_refund_no: str = "") -> None:
        self.succeeded_at = succeeded_at
        self.channel_refund_no = channel_refund_no or self.channel_refund_no

    @transition(field=status, source=[R.PENDING, R.PROCESSING], target=R.FAILED)
    def mark_failed(self, *, code: str, message: str) -> None:
        self.failure_code = code
        self.failure_message = message[:255]


class IdempotencyRecord(models.Model):
    """The answer given to a merchant request made under an ``Idempotency-Key`` (``payments.idempotency``)."""

    merchant = models.ForeignKey(Merchant, on_delete=models.CASCADE, db_index=False)  # idempotency_merchant_key_uniq
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of method, path and body.")
    response_status = models.PositiveSmallIntegerField()
    response_body = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["merchant", "key"], name="idempotency_merchant_key_uniq")]
        # Rows are written in expiry order, so a BRIN index serves the hourly purge at a fraction of a btree's
        # cost to every request with a key.
        indexes = [BrinIndex(fields=["expires_at"], name="idempotency_expires_brin")]


class TransitionLog(models.Model):
    """Every state change of an order or a refund: which transition, from where, by whom, in which trace."""

    class Source(models.TextChoices):
        API = "api"
        WORKER = "worker"
        CALLBACK = "callback"
        SWEEP = "sweep"
        ADMIN = "admin"
        RECONCILIATION = "reconciliation"

    object_type = models.CharField(max_length=16)
    object_id = models.CharField(max_length=32)  # see transitionlog_object (no LIKE index, unlike db_index)
    transition = models.CharField(max_length=64)
    from_state = models.CharField(max_length=32)
    to_state = models.CharField(max_length=32)
    source = models.CharField(max_length=16, choices=Source.choices)
    trace_id = models.CharField(max_length=32, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["object_id"], name="transitionlog_object")]


class Event(models.Model):
    """A merchant-facing event (``order.succeeded``…): the unit that webhooks deliver."""

    public_id = _id_field(new_event_id)
    merchant = models.ForeignKey(Merchant, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=32, db_index=True)
    order = models.ForeignKey(Order, on_delete=models.CASCADE, null=True, related_name="events")
    refund = models.ForeignKey(Refund, on_delete=models.CASCADE, null=True, related_name="events")
    data = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [_public_id_unique("event")]
        indexes = [models.Index(fields=["merchant", "-id"], name="event_merchant_recent")]
        permissions = [("redeliver_event", "Can send an event's webhooks again")]


class ChannelNotification(models.Model):
    """An inbound notification from a channel, stored raw before anything acts on it."""

    class State(models.TextChoices):
        RECEIVED = "received"  # verified and stored; a worker will apply it
        PROCESSED = "processed"
        REJECTED = "rejected"  # failed verification or did not match the order; changed nothing

    channel = models.CharField(max_length=16)
    # The channel's own id, stable across its retries. Null when the notification could not be verified:
    # nothing in it can be trusted, not even its id.
    channel_notification_id = models.CharField(max_length=128, null=True, blank=True)
    headers = models.JSONField(default=dict, help_text="Request headers, signatures removed.")
    body = models.TextField()
    # What the channel's adapter verified and parsed out of the body (``channels.base.notification_to_dict``).
    payload = models.JSONField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RECEIVED, db_index=True)
    reason = models.CharField(max_length=64, blank=True)
    order = models.ForeignKey(Order, on_delete=models.SET_NULL, null=True, blank=True, related_name="notifications")
    trace_id = models.CharField(max_length=32, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["channel", "channel_notification_id"], name="notification_channel_id_uniq"
            )
        ]


class WebhookDelivery(models.Model):
    """One chain of attempts to deliver an event to an endpoint (Saleor's model: state in rows, not the broker).

    Created with its event, in the same transaction. Each attempt is a ``WebhookAttempt``; the beat sweep sends
    what is due (``next_attempt_at``), so a lost task or broker loses nothing. A redelivery is a new chain; the old
    one and its attempts stay."""

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"  # every attempt of the schedule failed: visible to ops, re-sendable

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    url = models.URLField(max_length=500)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # When the next attempt is due; while an attempt is under way, when it is given up for lost (its lease).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        indexes = [
            # The sweep's query: only pending rows are in it, so delivered ones cost nothing.
            models.Index(fields=["next_attempt_at"], condition=Q(state="pending"), name="webhook_delivery_due"),
        ]

    def __str__(self) -> str:
        return f"{self.event.public_id} → {self.url}"


class WebhookAttempt(models.Model):
    """One POST of a delivery: when, the answer's status (none if there was no answer), how long, what went wrong.
    Never the body, never a secret."""

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_rows")
    number = models.PositiveSmallIntegerField()
    at = models.DateTimeField()
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField()
    error = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_number_uniq")]
