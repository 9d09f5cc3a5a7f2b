"""Ops' view of the money path. Money state is read-only here: every change goes through ``payments.services``,
and every action is written to the transition log with the staff user who took it.

Who may do what is in payments/staff.py (the groups ops, finance, support); an action a user may not take is
not shown to them (``has_<permission>_permission``). An order's page tells its whole story (admin_story.py);
the dashboard is admin_dashboard.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme

from channels.base import ChannelError
from channels.money import exponent, format_money, from_major
from channels.registry import CHANNEL_NAMES
from payments import admin_story, services, webhook_http
from payments.models import (
    OPEN_ORDER_STATES,
    PAID_ORDER_STATES,
    ApiKey,
    ChannelNotification,
    Event,
    IdempotencyRecord,
    Merchant,
    Order,
    OrderStatus,
    Refund,
    TransitionLog,
    WebhookAttempt,
    WebhookDelivery,
)
from payments.services.admin_actions import ADMIN_ACTION
from payments.services.orders import LATE_PAYMENT_FLAGS

admin.site.site_header = "Payments administration"
admin.site.site_title = "Payments admin"
admin.site.index_title = "Operations"
admin.site.index_template = "admin/payments_index.html"

# Channel calls are made while the request waits: an action asks the channel about this many orders at most.
MAX_CHANNEL_CALLS = 50
ADMIN = TransitionLog.Source.ADMIN


def money(field: str, description: str) -> Callable[[Any, Any], str]:
    """A list column showing ``field`` (minor units) with the row's currency: ``10.50 CNY``."""

    @admin.display(description=description, ordering=field)
    def show(self: Any, obj: Any) -> str:
        return format_money(getattr(obj, field), obj.currency)

    return show


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows are never added, edited or deleted here: state changes only through a service (actions)."""

    show_full_result_count = False  # one COUNT(*) of a large table per page is enough
    exact_search: tuple[str, ...] = ()

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        """Ids are looked up exactly (and case-sensitively, as they are made), so the indexes serve them."""
        term = search_term.strip()
        if not term or not self.exact_search:
            return super().get_search_results(request, queryset, search_term)
        match = Q()
        for field in self.exact_search:
            match |= Q(**{field: term})
        return queryset.filter(match), False

    def response_action(self, request: HttpRequest, queryset: QuerySet, *args: Any, **kwargs: Any) -> Any:
        """After an action taken from another page (an order's story), go back to that page."""
        response = super().response_action(request, queryset, *args, **kwargs)
        back = request.POST.get("_next", "")
        if isinstance(response, HttpResponseRedirect) and back and url_has_allowed_host_and_scheme(
            back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return HttpResponseRedirect(back)
        return response


class AttentionFilter(admin.SimpleListFilter):
    title = "attention"
    parameter_name = "attention"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # Only rows that need ops are in the attention index (Order) or worth listing: few distinct values.
        reasons = (model_admin.model.objects.exclude(attention="").order_by("attention")
                   .values_list("attention", flat=True).distinct())
        return [("any", "needs attention"), ("none", "none"), *((r, r) for r in reasons)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value == "any":
            return queryset.exclude(attention="")
        if value == "none":
            return queryset.filter(attention="")
        return queryset.filter(attention=value) if value else queryset


def choices_filter(title: str, field: str, choices: list[str] | tuple[str, ...]) -> type[admin.SimpleListFilter]:
    """A filter of fixed choices: Django's own filter of a plain column lists its values with a SELECT DISTINCT,
    a scan of the whole table at each page."""

    class Filter(admin.SimpleListFilter):
        parameter_name = field

        def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
            return [(choice, choice) for choice in choices]

        def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
            return queryset.filter(**{field: self.value()}) if self.value() else queryset

    Filter.title = title
    return Filter


ChannelFilter = choices_filter("channel", "channel", CHANNEL_NAMES)


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
    search_fields = ("=public_id", "name")
    exclude = ("webhook_secret", "previous_webhook_secret", "previous_webhook_secret_until")
    # Rotations hand out secrets: whoever may change merchants (superusers), not the staff groups.
    actions = ["rotate_key", "rotate_webhook_secret"]

    @admin.action(description="Rotate the webhook secret (the old one keeps signing for 24 h)", permissions=["change"])
    def rotate_webhook_secret(self, request: HttpRequest, queryset: QuerySet[Merchant]) -> None:
        for merchant in queryset:
            secret = services.webhook_secret_rotate(merchant_id=merchant.pk)
            # Shown once, to the ops user who rotated it, to hand to the merchant.
            self.message_user(request, f"{merchant.name}: new webhook secret {secret}", messages.WARNING)

    @admin.action(description="Revoke the keys and issue a new secret key", permissions=["change"])
    def rotate_key(self, request: HttpRequest, queryset: QuerySet[Merchant]) -> None:
        for merchant in queryset:
            key = services.api_key_rotate(merchant=merchant)
            # Shown once, to the ops user who rotated it; only its hash is stored.
            self.message_user(request, f"{merchant.name}: new secret key {key} (the old ones stop working within"
                                       f" {settings.API_KEY_CACHE_TTL_S:g} s)", messages.WARNING)


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = ("prefix", "merchant", "scopes", "created_at", "revoked_at")
    list_select_related = ("merchant",)


class ReadOnlyInline(admin.TabularInline):
    """Rows shown with their parent, never added, changed or deleted here: their fields are read-only."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RefundInline(ReadOnlyInline):
    model = Refund
    fields = ("link", "merchant_refund_no", "refund_amount", "status", "attention", "reason", "created_at")
    readonly_fields = fields

    @admin.display(description="refund")
    def link(self, refund: Refund) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:payments_refund_change", args=[refund.pk]),
                           refund.public_id)

    @admin.display(description="amount")
    def refund_amount(self, refund: Refund) -> str:
        return format_money(refund.amount, refund.currency)


class RefundForm(forms.Form):
    amount = forms.CharField(max_length=24, help_text="In the order's currency, e.g. 10.50")
    reason = forms.CharField(max_length=127, required=False)

    def __init__(self, *args: Any, order: Order, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.order = order
        refundable = order.amount - order.amount_refunded
        self.fields["amount"].help_text = (f"In {order.currency}, at most {format_money(refundable, order.currency)}"
                                           f" ({exponent(order.currency)} decimals)")

    def clean_amount(self) -> int:
        try:
            amount = from_major(self.cleaned_data["amount"], self.order.currency)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        if amount < 1:
            raise forms.ValidationError("the amount must be positive")
        return amount


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "merchant_order_no", "merchant_name", "order_amount", "channel", "status",
                    "attention", "created_at")
    list_select_related = ("merchant",)
    list_filter = ("status", ChannelFilter, AttentionFilter, "merchant", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("public_id",)  # the search box; exact_search says what it matches
    exact_search = ("public_id", "merchant_order_no", "channel_trade_no", "trace_id")
    search_help_text = "Our id (ord_…), the merchant's order number, the channel's trade number or a trace id."
    ordering = ("-id",)
    fieldsets = (
        (None, {"fields": ("public_id", "merchant", "merchant_order_no", "status", "attention", "trace")}),
        ("Money", {"fields": ("order_amount", "refunded_amount", "channel", "channel_trade_no", "paid_at")}),
        ("Details", {"fields": ("description", "metadata", "notify_url", "pay_url", "failure_code",
                                "failure_message", "charge_attempts", "expires_at", "last_channel_check_at",
                                "created_at", "updated_at")}),
    )
    readonly_fields = ("public_id", "merchant", "merchant_order_no", "status", "attention", "trace", "order_amount",
                       "refunded_amount", "channel", "channel_trade_no", "paid_at", "description", "metadata",
                       "notify_url", "pay_url", "failure_code", "failure_message", "charge_attempts", "expires_at",
                       "last_channel_check_at", "created_at", "updated_at")
    inlines = [RefundInline]
    change_form_template = "admin/payments/order/story.html"
    actions = ["requery", "close", "retry_charge", "refund", "accept_late_payment", "refund_late_payment"]

    order_amount = money("amount", "amount")
    refunded_amount = money("amount_refunded", "refunded")

    @admin.display(description="merchant", ordering="merchant__name")
    def merchant_name(self, order: Order) -> str:
        return order.merchant.name

    @admin.display(description="trace")
    def trace(self, order: Order) -> str:
        return admin_story.trace_link(order.trace_id) or order.trace_id or "-"

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("payments.operate_order")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Order]:
        return super().get_queryset(request).select_related("merchant")

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        order = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if order is not None:
            context["story"] = admin_story.order_story(order)
            context["trace_url"] = admin_story.trace_url(order.trace_id)
            context["order_actions"] = self.actions_for(request, order)
            context["can_redeliver"] = request.user.has_perm("payments.redeliver_event")
        return super().change_view(request, object_id, form_url, context)

    def actions_for(self, request: HttpRequest, order: Order) -> list[tuple[str, str]]:
        """The actions that apply to ``order`` now, as (name, label), for the buttons of its page."""
        if not self.has_operate_permission(request):
            return []
        found = []
        if order.status in OPEN_ORDER_STATES:
            found += [("requery", "Re-query the channel"), ("close", "Close")]
        if order.status == OrderStatus.CREATED and order.attention:
            found.append(("retry_charge", "Retry the charge"))
        if order.status in PAID_ORDER_STATES and order.amount_refunded < order.amount:
            found.append(("refund", "Refund…"))
        if order.attention in LATE_PAYMENT_FLAGS:
            found += [("accept_late_payment", "Accept the late payment"),
                      ("refund_late_payment", "Refund the late payment")]
        return found

    # -- actions: each calls a service, and writes what it asked and what came of it to the transition log ------

    def _each(self, request: HttpRequest, queryset: QuerySet[Order], action: str,
              do: Callable[[Order], str], *, channel_calls: bool = False) -> None:
        """Run ``do`` on each order as the staff user; ``do`` returns the outcome, or raises to refuse."""
        orders = list(queryset.select_related("merchant")[:MAX_CHANNEL_CALLS + 1] if channel_calls else queryset)
        if channel_calls and len(orders) > MAX_CHANNEL_CALLS:
            self.message_user(request, f"Select at most {MAX_CHANNEL_CALLS} orders: each one asks the channel.",
                              messages.ERROR)
            return
        by = request.user.get_username()
        for order in orders:
            level = messages.SUCCESS
            with services.acting_as(by):
                try:
                    outcome = do(order)
                except (services.OrderStateError, services.RefundExceedsAmount, services.DuplicateError) as exc:
                    outcome, level = f"refused: {exc}", messages.ERROR
                except ChannelError as exc:
                    outcome, level = f"the channel did not answer ({exc.code}): {exc.message}", messages.ERROR
            now = Order.objects.filter(pk=order.pk).values_list("status", flat=True).first() or order.status
            services.admin_action_log(object_type="order", object_id=order.public_id, action=action, by=by,
                                      from_state=order.status, to_state=now, outcome=outcome)
            self.message_user(request, f"{order.public_id}: {outcome}", level)

    @admin.action(description="Re-query the channel", permissions=["operate"])
    def requery(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        def do(order: Order) -> str:
            if order.status not in OPEN_ORDER_STATES:
                return f"not asked: the order is {order.status} (only open orders are queried)"
            after = services.order_query(order_id=order.pk, source=ADMIN)
            if after.attention and after.attention != order.attention:
                return f"flagged {after.attention}"
            return f"{order.status} → {after.status}" if after.status != order.status else f"still {after.status}"

        self._each(request, queryset, "requery", do, channel_calls=True)

    @admin.action(description="Close (at the channel first)", permissions=["operate"])
    def close(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        def do(order: Order) -> str:
            services.order_close(order_id=order.pk, source=ADMIN)
            return "closed"

        self._each(request, queryset, "close", do, channel_calls=True)

    @admin.action(description="Retry the charge of flagged orders (queries the channel first)", permissions=["operate"])
    def retry_charge(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        def do(order: Order) -> str:
            if services.order_retry(order_id=order.pk):
                return "sent to the charge queue again"
            raise services.OrderStateError("only a created order flagged for ops is retried")

        self._each(request, queryset, "retry_charge", do)

    @admin.action(description="Late payment: accept it (the order becomes succeeded)", permissions=["operate"])
    def accept_late_payment(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        by = request.user.get_username()

        def do(order: Order) -> str:
            services.order_accept_late_payment(order_id=order.pk, by=by)
            return "late payment accepted"

        self._each(request, queryset, "accept_late_payment", do)

    @admin.action(description="Late payment: refund it in full through the channel", permissions=["operate"])
    def refund_late_payment(self, request: HttpRequest, queryset: QuerySet[Order]) -> None:
        by = request.user.get_username()

        def do(order: Order) -> str:
            refund = services.order_refund_late_payment(order_id=order.pk, by=by)
            return f"refund {refund.public_id} of {format_money(refund.amount, refund.currency)} requested"

        self._each(request, queryset, "refund_late_payment", do)

    @admin.action(description="Refund an amount…", permissions=["operate"])
    def refund(self, request: HttpRequest, queryset: QuerySet[Order]) -> HttpResponse | None:
        orders = list(queryset[:2])
        if len(orders) != 1:
            self.message_user(request, "Refund one order at a time.", messages.ERROR)
            return None
        order = orders[0]
        form = RefundForm(request.POST if "apply" in request.POST else None, order=order)
        if form.is_valid():
            amount, reason = form.cleaned_data["amount"], form.cleaned_data["reason"]

            def do(order: Order) -> str:
                refund, _ = services.refund_request(
                    order_id=order.pk, merchant_refund_no=f"admin-{uuid.uuid4().hex[:20]}", amount=amount,
                    reason=reason, source=ADMIN,
                )
                return f"refund {refund.public_id} of {format_money(amount, order.currency)} requested"

            self._each(request, queryset, "refund", do)
            return None
        return render(request, "admin/payments/order/refund.html", {
            **self.admin_site.each_context(request), "title": f"Refund {order.public_id}", "order": order,
            "form": form, "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME, "opts": self.model._meta,
            "paid": format_money(order.amount, order.currency),
            "refunded": format_money(order.amount_refunded, order.currency), "next": request.POST.get("_next", ""),
        })


@admin.register(Refund)
class RefundAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "order", "merchant_refund_no", "refund_amount", "channel", "status", "attention",
                    "created_at")
    list_select_related = ("order",)
    list_filter = ("status", choices_filter("channel", "order__channel", CHANNEL_NAMES), AttentionFilter,
                   "order__merchant", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("public_id",)
    exact_search = ("public_id", "merchant_refund_no", "channel_refund_no", "trace_id", "order__public_id",
                    "order__merchant_order_no")
    search_help_text = "The refund's or its order's id, the merchant's refund or order number, the channel's refund " \
                       "number or a trace id."
    ordering = ("-id",)
    exclude = ("amount",)
    readonly_fields = ("refund_amount",)
    refund_amount = money("amount", "amount")

    @admin.display(description="channel", ordering="order__channel")
    def channel(self, refund: Refund) -> str:
        return refund.order.channel


@admin.register(TransitionLog)
class TransitionLogAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "object_type", "object_id", "transition", "from_state", "to_state", "source", "by",
                    "trace_id")
    list_filter = (choices_filter("object", "object_type", ("order", "refund", "event", "discrepancy")), "source",
                   choices_filter("kind", "transition", ("create", ADMIN_ACTION)), "created_at")
    date_hierarchy = "created_at"
    search_fields = ("object_id",)
    exact_search = ("object_id", "trace_id")
    search_help_text = "An order's, refund's or event's id, or a trace id."
    ordering = ("-id",)

    @admin.display(description="by")
    def by(self, row: TransitionLog) -> str:
        return str(row.detail.get("by", "")) if isinstance(row.detail, dict) else ""


@admin.register(ChannelNotification)
class ChannelNotificationAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "channel", "channel_notification_id", "state", "reason", "order", "trace_id")
    list_select_related = ("order",)
    list_filter = (ChannelFilter, "state", "received_at")
    date_hierarchy = "received_at"
    search_fields = ("channel_notification_id",)
    exact_search = ("channel_notification_id", "order__public_id", "order__merchant_order_no",
                    "order__channel_trade_no", "trace_id")
    search_help_text = "The channel's notification id, the order's id, its merchant order number or channel trade " \
                       "number, or a trace id."
    ordering = ("-id",)


class WebhookDeliveryInline(ReadOnlyInline):
    model = WebhookDelivery
    fields = ("url", "state", "attempts", "last_status", "last_error", "next_attempt_at", "delivered_at")
    readonly_fields = fields


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "type", "merchant", "order", "created_at")
    list_select_related = ("merchant", "order")
    list_filter = ("type", "merchant", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("public_id",)
    exact_search = ("public_id", "order__public_id", "order__merchant_order_no", "order__channel_trade_no")
    search_help_text = "The event's id, or its order's id, merchant order number or channel trade number."
    ordering = ("-id",)
    inlines = [WebhookDeliveryInline]
    actions = ["redeliver"]

    def has_redeliver_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("payments.redeliver_event")

    @admin.action(description="Redeliver the webhooks of the selected events (a new attempt chain each)",
                  permissions=["redeliver"])
    def redeliver(self, request: HttpRequest, queryset: QuerySet[Event]) -> None:
        by = request.user.get_username()
        sent = 0
        for event in queryset.select_related("order", "merchant"):
            try:
                delivery = services.event_redeliver(event=event)
            except services.NoEndpoint as exc:
                outcome = f"refused: {exc}"
                self.message_user(request, f"{event.public_id}: {exc}", messages.ERROR)
            else:
                sent += 1
                outcome = f"new delivery to {delivery.url}"
            order = event.order
            services.admin_action_log(
                object_type="order" if order else "event", object_id=order.public_id if order else event.public_id,
                action="redeliver", by=by, from_state=order.status if order else "", outcome=outcome,
                event=event.public_id,
            )
        self.message_user(request, f"{sent} events sent again")


class WebhookAttemptInline(ReadOnlyInline):
    model = WebhookAttempt
    fields = ("number", "at", "http_status", "latency_ms", "error")
    readonly_fields = fields


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("event", "event_type", "url", "state", "attempts", "last_status", "next_attempt_at", "created_at")
    list_select_related = ("event",)
    list_filter = ("state", "event__merchant", "created_at")
    date_hierarchy = "created_at"
    search_fields = ("event__public_id",)
    exact_search = ("event__public_id", "event__order__public_id", "event__order__merchant_order_no")
    search_help_text = "The event's id, or its order's id or merchant order number."
    ordering = ("-id",)
    inlines = [WebhookAttemptInline]

    @admin.display(description="type", ordering="event__type")
    def event_type(self, delivery: WebhookDelivery) -> str:
        return delivery.event.type


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(ReadOnlyAdmin):
    list_display = ("merchant", "key", "response_status", "created_at", "expires_at")
    list_select_related = ("merchant",)
