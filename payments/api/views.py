"""The merchant API (API.md): one view per resource, input validated here, work done by services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments import selectors, services, webhook_http
from payments.api.auth import is_live, merchant_of
from payments.api.errors import invalid, not_found
from payments.api.fields import (
    AmountField,
    MerchantNumberField,
    StrictCharField,
    StrictIntegerField,
    StrictSerializer,
    validate_channel_currency,
)
from payments.api.idempotency import Created, held_by_lock, stored_with_rows
from payments.idempotency import Claim
from payments.models import Event, Order, OrderStatus, Refund
from payments.representations import event_json, event_with_deliveries_json, order_json, refund_json

CREATED_ORDER = Created(order_json)
CREATED_REFUND = Created(refund_json)


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise invalid("parameter_invalid", "limit must be an integer from 1 to 100", "limit")
    return int(raw)


def _list(rows: list, has_more: bool, render: Callable[[Any], dict]) -> Response:
    return Response({"object": "list", "data": [render(row) for row in rows], "has_more": has_more})


def _page(request: Request, fetch: Callable[..., tuple[list, bool]], **filters: Any) -> tuple[list, bool]:
    try:
        return fetch(limit=_limit(request), starting_after=request.query_params.get("starting_after"), **filters)
    except (Order.DoesNotExist, Refund.DoesNotExist, Event.DoesNotExist):
        raise invalid("parameter_invalid", "starting_after is not an id from this list", "starting_after") from None


def _order_of(request: Request, order_id: str) -> Order:
    order = Order.objects.filter(merchant=merchant_of(request), public_id=order_id).first()
    if order is None:
        raise not_found("order")
    return order


ORDER_SCHEMA = inline_serializer("Order", {"id": serializers.CharField(), "status": serializers.CharField()})
EVENT_SCHEMA = inline_serializer("Event", {"id": serializers.CharField(), "type": serializers.CharField()})
REFUND_SCHEMA = inline_serializer("Refund", {"id": serializers.CharField(), "status": serializers.CharField()})


class OrdersView(APIView):
    class InputSerializer(StrictSerializer):
        merchant_order_no = MerchantNumberField()
        amount = AmountField()
        currency = StrictCharField(min_length=3, max_length=3)
        channel = StrictCharField(max_length=16)
        description = StrictCharField(max_length=127, required=False, allow_blank=True, default="")
        notify_url = serializers.URLField(max_length=500, required=False, allow_blank=True, default="")
        expires_in = StrictIntegerField(min_value=60, max_value=86400, required=False, default=900)
        metadata = serializers.DictField(
            child=StrictCharField(max_length=500, allow_blank=True), required=False, default=dict
        )

        def validate_notify_url(self, value: str) -> str:
            if value:
                try:
                    webhook_http.check_url(value, live=self.context["live"])
                except webhook_http.UnsafeUrl as unsafe:
                    raise serializers.ValidationError(f"notify_url is not allowed: {unsafe}",
                                                      code="invalid_request") from None
            return value

        def validate_metadata(self, value: dict[str, str]) -> dict[str, str]:
            if len(value) > 20 or any(len(k) > 40 for k in value):
                raise serializers.ValidationError("metadata takes at most 20 keys of at most 40 characters",
                                                  code="parameter_invalid")
            return value

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            validate_channel_currency(attrs)
            return attrs

    @extend_schema(request=InputSerializer, responses={201: ORDER_SCHEMA, 200: ORDER_SCHEMA})
    @stored_with_rows(CREATED_ORDER)
    def post(self, request: Request, idempotency_key: Claim | None) -> Response:
        merchant = merchant_of(request)
        data = self.InputSerializer(data=request.data, context={"merchant": merchant, "live": is_live(request)})
        data.is_valid(raise_exception=True)
        order, created = services.order_create(merchant=merchant, idempotency_key=idempotency_key,
                                               **data.validated_data)
        return CREATED_ORDER.response(order) if created else Response(order_json(order))

    @extend_schema(
        parameters=[OpenApiParameter(name, str) for name in
                    ("status", "merchant_order_no", "created_gte", "created_lt", "limit", "starting_after")],
        responses={200: ORDER_SCHEMA},
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        status = params.get("status")
        if status and status not in OrderStatus.values:
            raise invalid("parameter_invalid", "unknown status", "status")
        times = {}
        for name in ("created_gte", "created_lt"):
            if params.get(name):
                field = serializers.DateTimeField()
                try:
                    times[name] = field.to_internal_value(params[name])
                except serializers.ValidationError:
                    raise invalid("parameter_invalid", f"{name} must be an RFC 3339 time", name) from None
        rows, has_more = _page(request, selectors.order_list, merchant=merchant_of(request), status=status,
                               merchant_order_no=params.get("merchant_order_no"), **times)
        return _list(rows, has_more, order_json)


class OrderView(APIView):
    @extend_schema(responses={200: ORDER_SCHEMA})
    def get(self, request: Request, order_id: str) -> Response:
        return Response(order_json(_order_of(request, order_id)))


class OrderCloseView(APIView):
    @extend_schema(request=None, responses={200: ORDER_SCHEMA})
    @held_by_lock
    def post(self, request: Request, order_id: str) -> Response:
        order = services.order_close(order_id=_order_of(request, order_id).pk, source="api")
        return Response(order_json(order))


class OrderRefundsView(APIView):
    class InputSerializer(StrictSerializer):
        merchant_refund_no = MerchantNumberField()
        amount = AmountField()
        reason = StrictCharField(max_length=127, required=False, allow_blank=True, default="")

    @extend_schema(request=InputSerializer, responses={201: REFUND_SCHEMA, 200: REFUND_SCHEMA})
    @stored_with_rows(CREATED_REFUND)
    def post(self, request: Request, order_id: str, idempotency_key: Claim | None) -> Response:
        order = _order_of(request, order_id)
        data = self.InputSerializer(data=request.data, context={"merchant": merchant_of(request)})
        data.is_valid(raise_exception=True)
        refund, created = services.refund_request(order_id=order.pk, idempotency_key=idempotency_key,
                                                  **data.validated_data)
        return CREATED_REFUND.response(refund) if created else Response(refund_json(refund))

    @extend_schema(responses={200: REFUND_SCHEMA})
    def get(self, request: Request, order_id: str) -> Response:
        order = _order_of(request, order_id)
        rows, has_more = _page(request, selectors.refund_list, order=order)
        return _list(rows, has_more, refund_json)


class RefundView(APIView):
    @extend_schema(responses={200: REFUND_SCHEMA})
    def get(self, request: Request, refund_id: str) -> Response:
        refund = (Refund.objects.select_related("order")
                  .filter(order__merchant=merchant_of(request), public_id=refund_id).first())
        if refund is None:
            raise not_found("refund")
        return Response(refund_json(refund))


class EventView(APIView):
    @extend_schema(responses={200: EVENT_SCHEMA})
    def get(self, request: Request, event_id: str) -> Response:
        return Response(event_with_deliveries_json(_event_of(request, event_id)))


class EventRedeliverView(APIView):
    @extend_schema(request=None, responses={202: EVENT_SCHEMA})
    @held_by_lock
    def post(self, request: Request, event_id: str) -> Response:
        services.event_redeliver(event=_event_of(request, event_id))
        return Response(event_with_deliveries_json(_event_of(request, event_id)), status=202)


class WebhookSecretRotateView(APIView):
    @extend_schema(request=None, responses={200: inline_serializer("WebhookSecret", {
        "webhook_secret": serializers.CharField()})})
    @held_by_lock
    def post(self, request: Request) -> Response:
        return Response({"webhook_secret": services.webhook_secret_rotate(merchant_id=merchant_of(request).pk)})


def _event_of(request: Request, event_id: str) -> Event:
    event = selectors.event_of(merchant=merchant_of(request), event_id=event_id)
    if event is None:
        raise not_found("event")
    return event


class EventsView(APIView):
    @extend_schema(parameters=[OpenApiParameter("type", str), OpenApiParameter("starting_after", str)])
    def get(self, request: Request) -> Response:
        rows, has_more = _page(request, selectors.event_list, merchant=merchant_of(request),
                               type=request.query_params.get("type"))
        return _list(rows, has_more, event_json)
