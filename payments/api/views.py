"""The merchant API (API.md): one view per resource, input validated here, work done by services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments import db, selectors, services, webhook_http
from payments.api.auth import is_live, merchant_of
from payments.api.errors import invalid, not_found
from payments.api.fields import (
    MERCHANT_NO,
    AmountField,
    MerchantNumberField,
    StrictCharField,
    StrictIntegerField,
    StrictSerializer,
    validate_channel_currency,
)
from payments.api.idempotency import Created, held_by_lock, stored_with_rows
from payments.api.schema import (
    EVENT_TYPES,
    IDEMPOTENCY_KEY,
    LIMIT,
    STARTING_AFTER,
    EventListSerializer,
    EventWithDeliveriesSerializer,
    OrderListSerializer,
    OrderSerializer,
    RefundListSerializer,
    RefundSerializer,
    WebhookSecretSerializer,
    errors,
    id_path,
)
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
    if request.query_params.get("starting_after") == "":
        raise invalid("parameter_invalid", "starting_after is not an id from this list", "starting_after")
    try:
        return fetch(limit=_limit(request), starting_after=request.query_params.get("starting_after"), **filters)
    except (Order.DoesNotExist, Refund.DoesNotExist, Event.DoesNotExist):
        raise invalid("parameter_invalid", "starting_after is not an id from this list", "starting_after") from None


def _order_of(request: Request, order_id: str) -> Order:
    # Every status poll comes here: one prepared statement (payments.db), not an ORM query compiled each time.
    order = db.get(Order, merchant=merchant_of(request).pk, public_id=order_id)
    if order is None:
        raise not_found("order")
    return order


class OrdersView(APIView):
    @extend_schema_serializer(component_name="OrderCreate")
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
            if len(value) > 20 or any(len(k) > 40 or "\x00" in k for k in value):
                raise serializers.ValidationError("metadata takes at most 20 keys of at most 40 characters, no NUL",
                                                  code="parameter_invalid")
            return value

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            validate_channel_currency(attrs)
            return attrs

    @extend_schema(
        operation_id="orders_create", tags=["orders"], request=InputSerializer, parameters=[IDEMPOTENCY_KEY],
        responses={201: OrderSerializer, 200: OrderSerializer, **errors(409, 413)},
        description="201 with the new order; 200 with the existing one when `merchant_order_no` repeats with "
                    "identical parameters (409 `duplicate_merchant_order_no` with others).",
    )
    @stored_with_rows(CREATED_ORDER)
    def post(self, request: Request, idempotency_key: Claim | None) -> Response:
        merchant = merchant_of(request)
        data = self.InputSerializer(data=request.data, context={"merchant": merchant, "live": is_live(request)})
        data.is_valid(raise_exception=True)
        order, created = services.order_create(merchant=merchant, idempotency_key=idempotency_key,
                                               **data.validated_data)
        return CREATED_ORDER.response(order) if created else Response(order_json(order))

    @extend_schema(
        operation_id="orders_list", tags=["orders"],
        parameters=[
            OpenApiParameter("status", enum=OrderStatus.values),
            OpenApiParameter("merchant_order_no", pattern=r"^[A-Za-z0-9_\-.:]{1,64}$"),
            OpenApiParameter("created_gte", OpenApiTypes.DATETIME),
            OpenApiParameter("created_lt", OpenApiTypes.DATETIME),
            LIMIT, STARTING_AFTER["ord"],
        ],
        responses={200: OrderListSerializer, **errors()},
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        status = params.get("status")
        if status is not None and status not in OrderStatus.values:
            raise invalid("parameter_invalid", "unknown status", "status")
        times = {}
        for name in ("created_gte", "created_lt"):
            if params.get(name) is not None:
                field = serializers.DateTimeField()
                try:
                    times[name] = field.to_internal_value(params[name])
                except serializers.ValidationError:
                    raise invalid("parameter_invalid", f"{name} must be an RFC 3339 time", name) from None
        number = params.get("merchant_order_no")
        if number is not None and not MERCHANT_NO.match(number):
            raise invalid("parameter_invalid", "merchant_order_no must be 1-64 letters, digits or _-.:",
                          "merchant_order_no")
        rows, has_more = _page(request, selectors.order_list, merchant=merchant_of(request), status=status,
                               merchant_order_no=params.get("merchant_order_no"), **times)
        return _list(rows, has_more, order_json)


class OrderView(APIView):
    @extend_schema(operation_id="orders_get", tags=["orders"], parameters=[id_path("order_id", "ord")],
                   responses={200: OrderSerializer, **errors(404)})
    def get(self, request: Request, order_id: str) -> Response:
        return Response(order_json(_order_of(request, order_id)))


class OrderCloseView(APIView):
    @extend_schema(
        operation_id="orders_close", tags=["orders"], request=None,
        parameters=[id_path("order_id", "ord"), IDEMPOTENCY_KEY],
        responses={200: OrderSerializer, **errors(404, 409, 413, 502)},
        description="Closes an unpaid order after the channel confirmed it; 409 `order_state` if it is paid.",
    )
    @held_by_lock
    def post(self, request: Request, order_id: str) -> Response:
        order = services.order_close(order_id=_order_of(request, order_id).pk, source="api")
        return Response(order_json(order))


class OrderRefundsView(APIView):
    @extend_schema_serializer(component_name="RefundCreate")
    class InputSerializer(StrictSerializer):
        merchant_refund_no = MerchantNumberField()
        amount = AmountField()
        reason = StrictCharField(max_length=127, required=False, allow_blank=True, default="")

    @extend_schema(
        operation_id="refunds_create", tags=["refunds"], request=InputSerializer,
        parameters=[id_path("order_id", "ord"), IDEMPOTENCY_KEY],
        responses={201: RefundSerializer, 200: RefundSerializer, **errors(404, 409, 413, 422)},
        description="409 `order_state` when the order is not paid; 422 when refunds would exceed the paid amount.",
    )
    @stored_with_rows(CREATED_REFUND)
    def post(self, request: Request, order_id: str, idempotency_key: Claim | None) -> Response:
        order = _order_of(request, order_id)
        data = self.InputSerializer(data=request.data, context={"merchant": merchant_of(request)})
        data.is_valid(raise_exception=True)
        refund, created = services.refund_request(order_id=order.pk, idempotency_key=idempotency_key,
                                                  **data.validated_data)
        return CREATED_REFUND.response(refund) if created else Response(refund_json(refund))

    @extend_schema(operation_id="refunds_list", tags=["refunds"],
                   parameters=[id_path("order_id", "ord"), LIMIT, STARTING_AFTER["rfd"]],
                   responses={200: RefundListSerializer, **errors(404)})
    def get(self, request: Request, order_id: str) -> Response:
        order = _order_of(request, order_id)
        rows, has_more = _page(request, selectors.refund_list, order=order)
        return _list(rows, has_more, refund_json)


class RefundView(APIView):
    @extend_schema(operation_id="refunds_get", tags=["refunds"], parameters=[id_path("refund_id", "rfd")],
                   responses={200: RefundSerializer, **errors(404)})
    def get(self, request: Request, refund_id: str) -> Response:
        refund = (Refund.objects.select_related("order")
                  .filter(order__merchant=merchant_of(request), public_id=refund_id).first())
        if refund is None:
            raise not_found("refund")
        return Response(refund_json(refund))


class EventView(APIView):
    @extend_schema(operation_id="events_get", tags=["events"], parameters=[id_path("event_id", "evt")],
                   responses={200: EventWithDeliveriesSerializer, **errors(404)})
    def get(self, request: Request, event_id: str) -> Response:
        return Response(event_with_deliveries_json(_event_of(request, event_id)))


class EventRedeliverView(APIView):
    @extend_schema(operation_id="events_redeliver", tags=["events"], request=None,
                   parameters=[id_path("event_id", "evt"), IDEMPOTENCY_KEY],
                   responses={202: EventWithDeliveriesSerializer, **errors(404, 409, 413)})
    @held_by_lock
    def post(self, request: Request, event_id: str) -> Response:
        services.event_redeliver(event=_event_of(request, event_id))
        return Response(event_with_deliveries_json(_event_of(request, event_id)), status=202)


class WebhookSecretRotateView(APIView):
    @extend_schema(operation_id="webhook_secret_rotate", tags=["events"], request=None, parameters=[IDEMPOTENCY_KEY],
                   responses={200: WebhookSecretSerializer, **errors(409, 413)})
    @held_by_lock
    def post(self, request: Request) -> Response:
        return Response({"webhook_secret": services.webhook_secret_rotate(merchant_id=merchant_of(request).pk)})


def _event_of(request: Request, event_id: str) -> Event:
    event = selectors.event_of(merchant=merchant_of(request), event_id=event_id)
    if event is None:
        raise not_found("event")
    return event


class EventsView(APIView):
    @extend_schema(operation_id="events_list", tags=["events"],
                   parameters=[OpenApiParameter("type", enum=EVENT_TYPES), LIMIT, STARTING_AFTER["evt"]],
                   responses={200: EventListSerializer, **errors()})
    def get(self, request: Request) -> Response:
        event_type = request.query_params.get("type")
        if event_type is not None and event_type not in EVENT_TYPES:
            raise invalid("parameter_invalid", f"type must be one of {', '.join(EVENT_TYPES)}", "type")
        rows, has_more = _page(request, selectors.event_list, merchant=merchant_of(request), type=event_type)
        return _list(rows, has_more, event_json)
