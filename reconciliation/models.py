"""Reconciliation runs and their discrepancies.

A run is one channel account and one business date (a calendar day of the channel's zone), in versions: running
a date again adds a version and keeps the earlier ones. Its totals and fingerprints describe both sides; its
discrepancies are the rows of the bill and of our books that did not match, each with what was done about it.
The bill's rows themselves live in a staging table only while the run matches them (reconciliation/matching.py).
"""

from __future__ import annotations

from django.db import models

from payments.models import Order, Refund, public_id


def new_run_id() -> str:
    return public_id("rec_")


class Run(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"  # created, not started
        WAITING_BILL = "waiting_bill"  # the channel has not made the bill yet; the task retries
        RUNNING = "running"
        SUCCEEDED = "succeeded"  # matched; discrepancies (if any) are in the run
        FAILED = "failed"  # no bill in time, or an error; see ``error``

    public_id = models.CharField(max_length=32, default=new_run_id, editable=False, unique=True)
    channel = models.CharField(max_length=16)
    # The channel account whose bill this is (a channel may have a backup account: channels.registry); our side
    # is the orders placed with it.
    account = models.CharField(max_length=64, blank=True)
    business_date = models.DateField()
    version = models.PositiveIntegerField()
    timezone = models.CharField(max_length=64, help_text="The zone whose calendar day business_date is.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    error = models.CharField(max_length=255, blank=True)
    triggered_by = models.CharField(max_length=64, blank=True, help_text="beat, a command, or a user.")
    bill_attempts = models.PositiveIntegerField(default=0)
    bill_rows = models.PositiveIntegerField(default=0)
    # {"channel": {...}, "internal": {...}}: counts and sums of payments and refunds, fees and net, per side.
    totals = models.JSONField(default=dict, blank=True)
    channel_fingerprint = models.CharField(max_length=64, blank=True)
    internal_fingerprint = models.CharField(max_length=64, blank=True)
    # Payments matched here although our time fell on the neighbouring day: the neighbour's run looks here
    # before it reports them missing (few; a list, not a table).
    carried_in = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["channel", "account", "business_date", "version"],
                                    name="recon_run_version_uniq"),
        ]
        indexes = [models.Index(fields=["business_date", "channel"], name="recon_run_date")]
        ordering = ["-business_date", "channel", "-version"]
        permissions = [("download_report", "Can download a reconciliation run's reports")]

    def __str__(self) -> str:
        return f"{self.channel} ({self.account}) {self.business_date} v{self.version}"

    @property
    def fingerprints_equal(self) -> bool:
        return bool(self.channel_fingerprint) and self.channel_fingerprint == self.internal_fingerprint


class Discrepancy(models.Model):
    class Kind(models.TextChoices):
        MISSING_INTERNAL = "missing_internal"  # the channel has it, we do not have it as succeeded
        MISSING_CHANNEL = "missing_channel"  # we have it succeeded, the bill does not
        AMOUNT_MISMATCH = "amount_mismatch"
        STATUS_MISMATCH = "status_mismatch"  # the bill lists it in a state other than completed
        DUPLICATE = "duplicate"  # the bill lists one trade more than once

    class Status(models.TextChoices):
        OPEN = "open"  # waits for a decision
        CARRY_OVER = "carry_over"  # near midnight: waits for the neighbouring day's run before it is open
        AUTO_RESOLVED = "auto_resolved"  # compensated through the services, or matched on the neighbouring day
        RESOLVED = "resolved"  # decided by ops or finance

    class Decision(models.TextChoices):
        ACCEPT = "accept"  # the channel's record stands; nothing to move
        REFUND = "refund"  # the money goes back to the payer (a refund is requested)
        WRITE_OFF = "write_off"  # the difference is booked as a loss or gain

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="discrepancies")
    kind = models.CharField(max_length=24, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    record = models.CharField(max_length=8, help_text="payment or refund")
    out_trade_no = models.CharField(max_length=64, blank=True)
    out_refund_no = models.CharField(max_length=64, blank=True)
    channel_trade_no = models.CharField(max_length=64, blank=True)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    refund = models.ForeignKey(Refund, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    currency = models.CharField(max_length=3, blank=True)
    channel_amount = models.BigIntegerField(null=True, blank=True)
    internal_amount = models.BigIntegerField(null=True, blank=True)
    channel_status = models.CharField(max_length=24, blank=True)
    internal_status = models.CharField(max_length=24, blank=True)
    channel_time = models.DateTimeField(null=True, blank=True)
    internal_time = models.DateTimeField(null=True, blank=True)
    awaits_date = models.DateField(null=True, blank=True, help_text="The neighbouring day a carry-over waits for.")
    decision = models.CharField(max_length=16, choices=Decision.choices, blank=True)
    resolution = models.CharField(max_length=255, blank=True, help_text="What was done, and why.")
    resolved_by = models.CharField(max_length=150, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "discrepancies"
        indexes = [
            models.Index(fields=["status"], condition=~models.Q(status="auto_resolved"), name="recon_disc_status"),
            models.Index(fields=["awaits_date"], condition=models.Q(status="carry_over"), name="recon_disc_carry"),
        ]
        permissions = [("resolve_discrepancy", "Can decide on a reconciliation discrepancy")]

    def __str__(self) -> str:
        return f"{self.kind} {self.out_refund_no or self.out_trade_no}"

    @property
    def unresolved(self) -> bool:
        return self.status in (self.Status.OPEN, self.Status.CARRY_OVER)
