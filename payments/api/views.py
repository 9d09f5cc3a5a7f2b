"""The merchant API (API.md): one view per resource, input validated here, work done by services."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments import idempotency, selectors, services
from payments.idempotency import Claim
from payments.api.errors import ApiError, exception_handler, invalid, not_found
from payments.api.fields import (
    AmountField,
    MerchantNumberField,
    StrictCharField,
    StrictIntegerField,
    StrictSerializer,
    validate_channel_currency,
)
from payments.models import Event, Order, OrderStatus, Refund
from payments.representations import event_json, order_json, refund_json

IDEMPOTENCY_KEY_MAX = 255


def _fingerprint(request: Request) -> str:
    try:
        body = json.dumps(json.loads(request.body or b"null"), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        body = request.body
    return hashlib.sha256(f"{request.method} {request.path}\n".encode() + body).hexdigest()


def idempotent(*, atomic: bool) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Run a POST at most once per ``Idempotency-Key``; repeats get the stored answer (API.md).

    ``atomic``: the view only writes to the database. It gets the key as ``idempotency_key`` (a ``Claim``, or
    None without a key) and its service stores the answer with its own rows, in one transaction: a crash
    leaves neither, and the key's unique constraint makes a concurrent repeat wait, then replay. Answers the
    service did not store (errors, an existing object) are stored after the view returns.
    Otherwise the view calls a channel and must not hold a transaction: the key is locked while it runs, and
    its answer is stored after it returns; one lost to a crash only means the (idempotent) call runs again.
    """

    def decorate(view: Callable[..., Response]) -> Callable[..., Response]:
        def run(self: APIView, request: Request, *args: Any, **kwargs: Any) -> Response:
            try:
                return view(self, request, *args, **kwargs)
            except idempotency.KeyAnswered:
                raise
            except Exception as exc:  # an error's answer is stored too, like any other answer
                return exception_handler(exc, {"view": self, "request": request})

        def replay(request: Request, key: str, fingerprint: str) -> Response | None:
            stored = idempotency.idempotency_lookup(merchant=request.user, key=key, fingerprint=fingerprint)
            if stored is None:
                return None
            return Response(stored.body, status=stored.status, headers={"Idempotent-Replayed": "true"})

        def store(request: Request, key: str, fingerprint: str, response: Response) -> None:
            # A 5xx is our failure, not an answer: keep nothing, so that a retry runs again.
            if response.status_code < 500:
                idempotency.idempotency_save(merchant=request.user, key=key, fingerprint=fingerprint,
                                             status=response.status_code, body=response.data)

        def run_atomic(self: APIView, request: Request, key: str, fingerprint: str, *args: Any,
                       **kwargs: Any) -> Response:
            for _ in range(2):  # a second time only if the stored answer had expired (and is now deleted)
                claim = idempotency.Claim(merchant=request.user, key=key, fingerprint=fingerprint)
                try:
                    response = run(self, request, *args, idempotency_key=claim, **kwargs)
                    if not claim.answered:
                        store(request, key, fingerprint, response)
                    return response
                except idempotency.KeyAnswered:
                    answer = replay(request, key, fingerprint)
                    if answer is not None:
                        return answer
            raise ApiError(409, "idempotency_error", "idempotency_key_in_flight",
                           "a request with this Idempotency-Key is still being processed")

        def run_locked(self: APIView, request: Request, key: str, fingerprint: str, *args: Any,
                       **kwargs: Any) -> Response:
            with idempotency.idempotency_key_lock(merchant=request.user, key=key):
                answer = replay(request, key, fingerprint)
                if answer is not None:
                    return answer
                response = run(self, request, *args, **kwargs)
                store(request, key, fingerprint, response)
                return response

        @functools.wraps(view)
        def wrapper(self: APIView, request: Request, *args: Any, **kwargs: Any) -> Response:
            key = request.headers.get("Idempotency-Key")
            if key is None:
                return view(self, request, *args, **({"idempotency_key": None} if atomic else {}), **kwargs)
            if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable():
                raise invalid("idempotency_key_invalid", "Idempotency-Key must be 1-255 printable characters",
                              "Idempotency-Key")
            fingerprint = _fingerprint(request)
            try:
                return (run_atomic if atomic else run_locked)(self, request, key, fingerprint, *args, **kwargs)
            except idempotency.KeyReused:
                raise ApiError(409, "idempotency_error", "idempotency_key_reused",
                               "this Idempotency-Key was used with a different request") from None
            except idempotency.KeyInFlight:
                raise ApiError(409, "idempotency_error", "idempotency_key_in_flight",
                               "a request with this Idempotency-Key is still being processed") from None

        return wrapper

    return decorate


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
    order = Order.objects.filter(merchant=request.user, public_id=order_id).first()
    if order is None:
        raise not_found("order")
    return order


ORDER_SCHEMA = inline_serializer("Order", {"id": serializers.CharField(), "status": serializers.CharField()})
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

        def validate_metadata(self, value: dict[str, str]) -> dict[str, str]:
            if len(value) > 20 or any(len(k) > 40 for k in value):
                raise serializers.ValidationError("metadata takes at most 20 keys of at most 40 characters",
                                                  code="parameter_invalid")
            return value

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            validate_channel_currency(attrs)
            return attrs

    @extend_schema(request=InputSerializer, responses={201: ORDER_SCHEMA, 200: ORDER_SCHEMA})
    @idempotent(atomic=True)
    def post(self, request: Request, idempotency_key: Claim | None) -> Response:
        data = self.InputSerializer(data=request.data, context={"merchant": request.user})
        data.is_valid(raise_exception=True)
        try:
            order, created = services.order_create(merchant=request.user, idempotency_key=idempotency_key,
                                                   **data.validated_data)
        except services.DuplicateError:
            raise ApiError(409, "invalid_request_error", "duplicate_merchant_order_no",
                           "merchant_order_no was already used with different parameters",
                           param="merchant_order_no") from None
        return Response(order_json(order), status=201 if created else 200)

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
        rows, has_more = _page(request, selectors.order_list, merchant=request.user, status=status,
                               merchant_order_no=params.get("merchant_order_no"), **times)
        return _list(rows, has_more, order_json)


class OrderView(APIView):
    @extend_schema(responses={200: ORDER_SCHEMA})
    def get(self, request: Request, order_id: str) -> Response:
        return Response(order_json(_order_of(request, order_id)))


class OrderCloseView(APIView):
    @extend_schema(request=None, responses={200: ORDER_SCHEMA})
    @idempotent(atomic=False)
    def post(self, request: Request, order_id: str) -> Response:
        order = _order_of(request, order_id)
        try:
            order = services.order_close(order_id=order.pk, source="api")
        except services.OrderStateError as exc:
            raise ApiError(409, "invalid_request_error", "order_state", str(exc)) from None
        return Response(order_json(order))


class OrderRefundsView(APIView):
    class InputSerializer(StrictSerializer):
        merchant_refund_no = MerchantNumberField()
        amount = AmountField()
        reason = StrictCharField(max_length=127, required=False, allow_blank=True, default="")

    @extend_schema(request=InputSerializer, responses={201: REFUND_SCHEMA, 200: REFUND_SCHEMA})
    @idempotent(atomic=True)
    def post(self, request: Request, order_id: str, idempotency_key: Claim | None) -> Response:
        order = _order_of(request, order_id)
        data = self.InputSerializer(data=request.data, context={"merchant": request.user})
        data.is_valid(raise_exception=True)
        try:
            refund, created = services.refund_request(order_id=order.pk, idempotency_key=idempotency_key,
                                                      **data.validated_data)
        except services.DuplicateError:
            raise ApiError(409, "invalid_request_error", "duplicate_merchant_refund_no",
                           "merchant_refund_no was already used with different parameters",
                           param="merchant_refund_no") from None
        except services.OrderStateError as exc:
            raise ApiError(409, "invalid_request_error", "order_state", str(exc)) from None
        except services.RefundExceedsAmount as exc:
            raise ApiError(422, "invalid_request_error", "refund_exceeds_amount", str(exc), param="amount") from None
        return Response(refund_json(refund), status=201 if created else 200)

    @extend_schema(responses={200: REFUND_SCHEMA})
    def get(self, request: Request, order_id: str) -> Response:
        order = _order_of(request, order_id)
        rows, has_more = _page(request, selectors.refund_list, order=order)
        return _list(rows, has_more, refund_json)


class RefundView(APIView):
    @extend_schema(responses={200: REFUND_SCHEMA})
    def get(self, request: Request, refund_id: str) -> Response:
        refund = Refund.objects.select_related("order").filter(order__merchant=request.user, public_id=refund_id).first()
        if refund is None:
            raise not_found("refund")
        return Response(refund_json(refund))


class EventsView(APIView):
    @extend_schema(parameters=[OpenApiParameter("type", str), OpenApiParameter("starting_after", str)])
    def get(self, request: Request) -> Response:
        rows, has_more = _page(request, selectors.event_list, merchant=request.user,
                               type=request.query_params.get("type"))
        return _list(rows, has_more, event_json)
