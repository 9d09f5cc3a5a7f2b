"""Ops' view of the money path. Money state is read-only here: changes go through services."""

from django import forms
from django.conf import settings
from django.contrib import admin, messages

from payments import services, webhook_http
from payments.models import (
    ApiKey,
    ChannelNotification,
    Event,
    IdempotencyRecord,
    Merchant,
    Order,
    Refund,
    TransitionLog,
    WebhookAttempt,
    WebhookDelivery,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class MerchantForm(forms.ModelForm):
    default_notify_url = forms.URLField(max_length=500, required=False, assume_scheme="https")

    def clean_default_notify_url(self) -> str:
        url = self.cleaned_data["default_notify_url"]
        if url:
            live = self.instance.pk is not None and (
                self.instance.api_keys.filter(prefix__startswith="sk_live_").exists())
            try:
                webhook_http.check_url(url, live=live)
            except webhook_http.UnsafeUrl as unsafe:
                raise forms.ValidationError(str(unsafe)) from None
        return url


@admin.register(Merchant)
class MerchantAdmin(admin.ModelAdmin):
    form = MerchantForm
    list_display = ("name", "public_id", "per_order_limit", "rate_limit_per_s", "is_active", "created_at")
    readonly_fields = ("public_id", "created_at")
    exclude = ("webhook_secret", "previous_webhook_secret", "previous_webhook_secret_until")
    actions = ["rotate_key", "rotate_webhook_secret"]

    @admin.action(description="Rotate the webhook secret (the old one keeps signing for 24 h)")
    def rotate_webhook_secret(self, request, queryset):
        for merchant in queryset:
            secret = services.webhook_secret_rotate(merchant_id=merchant.pk)
            # Shown once, to the ops user who rotated it, to hand to the merchant.
            self.message_user(request, f"{merchant.name}: new webhook secret {secret}", messages.WARNING)

    @admin.action(description="Revoke the keys and issue a new secret key")
    def rotate_key(self, request, queryset):
        for merchant in queryset:
            key = services.api_key_rotate(merchant=merchant)
            # Shown once, to the ops user who rotated it; only its hash is stored.
            self.message_user(request, f"{merchant.name}: new secret key {key} (the old ones stop working within"
                                       f" {settings.API_KEY_CACHE_TTL_S:g} s)", messages.WARNING)


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = ("prefix", "merchant", "scopes", "created_at", "revoked_at")


class RefundInline(admin.TabularInline):
    model = Refund
    fields = ("public_id", "merchant_refund_no", "amount", "status", "attention", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "merchant", "merchant_order_no", "amount", "currency", "channel", "status",
                    "attention", "created_at")
    list_filter = ("status", "channel", "attention")
    search_fields = ("public_id", "merchant_order_no", "channel_trade_no", "trace_id")
    inlines = [RefundInline]
    actions = ["retry_charge", "accept_late_payment", "refund_late_payment"]

    @admin.action(description="Retry the charge of flagged orders (queries the channel first)")
    def retry_charge(self, request, queryset):
        retried = sum(services.order_retry(order_id=order.pk) for order in queryset)
        self.message_user(request, f"{retried} of {queryset.count()} orders sent to the charge queue again")

    @admin.action(description="Late payment: accept it (the order becomes succeeded)")
    def accept_late_payment(self, request, queryset):
        self._decide(request, queryset, services.order_accept_late_payment)

    @admin.action(description="Late payment: refund it in full through the channel")
    def refund_late_payment(self, request, queryset):
        self._decide(request, queryset, services.order_refund_late_payment)

    def _decide(self, request, queryset, decision):
        for order in queryset:
            try:
                decision(order_id=order.pk, by=request.user.get_username())
            except services.OrderStateError as exc:
                self.message_user(request, f"{order.public_id}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{order.public_id}: done")


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "order", "amount", "currency", "status", "attention", "created_at")
    list_filter = ("status", "attention")
    search_fields = ("public_id", "merchant_refund_no", "order__public_id")


@admin.register(TransitionLog)
class TransitionLogAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at", "object_type", "object_id", "transition", "from_state", "to_state", "source", "trace_id",
    )
    list_filter = ("object_type", "source", "transition")
    search_fields = ("object_id", "trace_id")


@admin.register(ChannelNotification)
class ChannelNotificationAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "channel", "channel_notification_id", "state", "reason", "order")
    list_filter = ("channel", "state", "reason")
    search_fields = ("channel_notification_id", "order__public_id")


class WebhookDeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    fields = ("url", "state", "attempts", "last_status", "last_error", "next_attempt_at", "delivered_at")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "merchant", "type", "created_at")
    list_filter = ("type",)
    search_fields = ("public_id", "order__public_id")
    inlines = [WebhookDeliveryInline]
    actions = ["redeliver"]

    @admin.action(description="Redeliver the webhooks of the selected events (a new attempt chain each)")
    def redeliver(self, request, queryset):
        sent = 0
        for event in queryset.select_related("order", "merchant"):
            try:
                services.event_redeliver(event=event)
                sent += 1
            except services.NoEndpoint as exc:
                self.message_user(request, f"{event.public_id}: {exc}", messages.ERROR)
        self.message_user(request, f"{sent} events sent again")


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = ("number", "at", "http_status", "latency_ms", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("event", "url", "state", "attempts", "last_status", "next_attempt_at", "created_at")
    list_filter = ("state",)
    search_fields = ("event__public_id", "url")
    inlines = [WebhookAttemptInline]


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ("merchant", "key", "response_status", "created_at", "expires_at")
