"""The OpenAPI description of the merchant API (``/api/schema/``): the answers' shapes, every error, the auth
schemes, the links between operations, and the endpoints that are not DRF views.

Merchants generate SDKs from it and schemathesis tests the API against it (tests/test_api_fuzz.py), so it must be
API.md's contract exactly. The output serializers here only describe: answers are rendered by the plain functions
of ``payments.representations`` (the hot path), and tests/test_api_schema.py checks the two agree.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema_field
from rest_framework import serializers

from channels.registry import CHANNEL_NAMES, available_channels, currencies
from payments.models import OrderStatus, RefundState, WebhookDelivery

ID_PATTERNS = {prefix: rf"^{prefix}_[A-Za-z0-9]{{1,28}}$" for prefix in ("ord", "rfd", "evt", "rec")}
MERCHANT_NO_PATTERN = r"^[A-Za-z0-9_\-.:]{1,64}$"
ALL_CURRENCIES = ["CNY", "EUR", "JPY", "USD"]
EVENT_TYPES = ["order.pending", "order.succeeded", "order.failed", "order.closed", "refund.succeeded",
               "refund.failed"]
ERROR_TYPES = ["invalid_request_error", "authentication_error", "idempotency_error", "rate_limit_error",
               "channel_error", "api_error"]
# Idempotency-Key: 1-255 printable ASCII characters, without spaces at either end (HTTP would strip them).
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]{0,253}[!-~])?$"


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "payments.api.auth.ApiKeyAuthentication"
    name = "secretKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {"type": "http", "scheme": "bearer", "bearerFormat": "sk_test_… / sk_live_…",
                "description": "The merchant's secret key: `Authorization: Bearer sk_…`."}


def _time(**kwargs: Any) -> serializers.DateTimeField:
    return serializers.DateTimeField(**kwargs)


class OrderSerializer(serializers.Serializer):
    id = serializers.RegexField(ID_PATTERNS["ord"])
    object = serializers.ChoiceField(choices=["order"])
    merchant_order_no = serializers.RegexField(MERCHANT_NO_PATTERN)
    amount = serializers.IntegerField(min_value=1)
    currency = serializers.ChoiceField(choices=ALL_CURRENCIES)
    channel = serializers.ChoiceField(choices=list(CHANNEL_NAMES))
    status = serializers.ChoiceField(choices=OrderStatus.values)
    description = serializers.CharField(max_length=127, allow_blank=True)
    metadata = serializers.DictField(child=serializers.CharField(allow_blank=True, max_length=500))
    notify_url = serializers.URLField(allow_null=True)
    pay_url = serializers.URLField(allow_null=True, help_text="The payer's page or QR code, once pending")
    channel_trade_no = serializers.CharField(allow_null=True)
    amount_refunded = serializers.IntegerField(min_value=0)
    failure_code = serializers.CharField(allow_null=True)
    failure_message = serializers.CharField(allow_null=True)
    expires_at = _time()
    paid_at = _time(allow_null=True)
    created_at = _time()
    updated_at = _time()


class RefundSerializer(serializers.Serializer):
    id = serializers.RegexField(ID_PATTERNS["rfd"])
    object = serializers.ChoiceField(choices=["refund"])
    order = serializers.RegexField(ID_PATTERNS["ord"])
    merchant_refund_no = serializers.RegexField(MERCHANT_NO_PATTERN)
    amount = serializers.IntegerField(min_value=1)
    currency = serializers.ChoiceField(choices=ALL_CURRENCIES)
    status = serializers.ChoiceField(choices=RefundState.values)
    reason = serializers.CharField(max_length=127, allow_blank=True)
    channel_refund_no = serializers.CharField(allow_null=True)
    failure_code = serializers.CharField(allow_null=True)
    failure_message = serializers.CharField(allow_null=True)
    created_at = _time()
    succeeded_at = _time(allow_null=True)


@extend_schema_field({"oneOf": [{"$ref": "#/components/schemas/Order"}, {"$ref": "#/components/schemas/Refund"}]})
class EventObjectField(serializers.JSONField):
    pass


class EventDataSerializer(serializers.Serializer):
    object = EventObjectField(help_text="The order or refund as it was when the event happened")


class EventSerializer(serializers.Serializer):
    id = serializers.RegexField(ID_PATTERNS["evt"])
    object = serializers.ChoiceField(choices=["event"])
    type = serializers.ChoiceField(choices=EVENT_TYPES)
    created_at = _time()
    data = EventDataSerializer()  # type: ignore[assignment]  # a field named "data", not Serializer.data


class DeliverySerializer(serializers.Serializer):
    endpoint = serializers.URLField()
    state = serializers.ChoiceField(choices=WebhookDelivery.State.values)
    attempts = serializers.IntegerField(min_value=0)
    last_status = serializers.IntegerField(allow_null=True)
    last_error = serializers.CharField(allow_null=True)
    next_attempt_at = _time(allow_null=True)
    created_at = _time()
    delivered_at = _time(allow_null=True)


class EventWithDeliveriesSerializer(EventSerializer):
    deliveries = DeliverySerializer(many=True)


def _list_of(name: str, item: type[serializers.Serializer]) -> type[serializers.Serializer]:
    return type(name, (serializers.Serializer,), {
        "object": serializers.ChoiceField(choices=["list"]),
        "data": item(many=True),
        "has_more": serializers.BooleanField(),
    })


OrderListSerializer = _list_of("OrderListSerializer", OrderSerializer)
RefundListSerializer = _list_of("RefundListSerializer", RefundSerializer)
EventListSerializer = _list_of("EventListSerializer", EventSerializer)


class WebhookSecretSerializer(serializers.Serializer):
    webhook_secret = serializers.RegexField(r"^whsec_[A-Za-z0-9+/=]+$")


class ErrorDetailSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=ERROR_TYPES)
    code = serializers.CharField()
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    trace_id = serializers.RegexField(r"^[0-9a-f]{32}$")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


# -- the errors each operation can answer (API.md's table) ---------------------------------------------------

ERROR_WHEN = {
    400: "Validation failed (`param` names the field), or a malformed body or Idempotency-Key",
    401: "Missing, unknown or revoked key (`authentication_failed`)",
    403: "The credentials are valid but not allowed here (`permission_denied`)",
    404: "No such object for this merchant (`not_found`)",
    409: "The order's state does not allow this (`order_state`), a duplicate merchant number, or the "
         "Idempotency-Key was used with another request or is still in flight (`idempotency_error`)",
    413: "The request body is larger than the limit (`request_too_large`)",
    422: "Refunds would exceed what was paid (`refund_exceeds_amount`)",
    429: "The merchant's rate limit (`rate_limited`); `Retry-After` is set",
    502: "The channel is unavailable (`channel_error`); safe to retry with the same Idempotency-Key",
    503: "The processor is unavailable (`service_unavailable`); safe to retry with the same Idempotency-Key",
}
COMMON = (400, 401, 429, 503)


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    return {status: OpenApiResponse(ErrorSerializer, description=ERROR_WHEN[status])
            for status in sorted({*COMMON, *statuses})}


IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
    description="1-255 printable ASCII characters; a repeat with the same body replays the first answer",
    pattern=IDEMPOTENCY_KEY_PATTERN,
)


def id_path(name: str, prefix: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.PATH, pattern=ID_PATTERNS[prefix])


LIMIT = OpenApiParameter("limit", {"type": "integer", "minimum": 1, "maximum": 100}, description="Default 20")
STARTING_AFTER = {prefix: OpenApiParameter("starting_after", OpenApiTypes.STR, pattern=ID_PATTERNS[prefix],
                                          description="The last id of the previous page")
                  for prefix in ("ord", "rfd", "evt")}


# -- what drf-spectacular does not generate: links, limits of this deployment, non-DRF endpoints -------------

LINKS = {
    # operation: {status: {link name: (target operation, {parameter: runtime expression})}}
    "orders_create": {status: {
        "GetOrder": ("orders_get", {"order_id": "$response.body#/id"}),
        "CloseOrder": ("orders_close", {"order_id": "$response.body#/id"}),
        "CreateRefund": ("refunds_create", {"order_id": "$response.body#/id"}),
        "ListRefunds": ("refunds_list", {"order_id": "$response.body#/id"}),
    } for status in ("200", "201")},
    "refunds_create": {status: {
        "GetRefund": ("refunds_get", {"refund_id": "$response.body#/id"}),
        "GetRefundOrder": ("orders_get", {"order_id": "$response.body#/order"}),
    } for status in ("200", "201")},
    "orders_get": {"200": {
        "CreateRefund": ("refunds_create", {"order_id": "$response.body#/id"}),
        "CloseOrder": ("orders_close", {"order_id": "$response.body#/id"}),
    }},
    "events_list": {"200": {"GetEvent": ("events_get", {"event_id": "$response.body#/data/0/id"})}},
    "events_get": {"200": {"RedeliverEvent": ("events_redeliver", {"event_id": "$response.body#/id"})}},
}

TEXT = {"text/plain": {"schema": {"type": "string"}}}
OPERATIONS_PATHS: dict[str, Any] = {
    "/healthz": {"get": {
        "operationId": "healthz", "tags": ["operations"], "security": [], "summary": "The process is alive",
        "responses": {"200": {"description": "Alive", "content": {"application/json": {"schema": {
            "type": "object", "properties": {"status": {"type": "string", "enum": ["ok"]}}, "required": ["status"],
        }}}}},
    }},
    "/readyz": {"get": {
        "operationId": "readyz", "tags": ["operations"], "security": [],
        "summary": "The database and the broker are reachable",
        "responses": {status: {"description": description, "content": {"application/json": {"schema": {
            "type": "object", "required": ["status", "checks"], "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            }}}}} for status, description in (("200", "Ready"), ("503", "Not ready: `checks` says what failed"))},
    }},
    "/metrics": {"get": {
        "operationId": "metrics", "tags": ["operations"], "security": [], "summary": "Prometheus metrics",
        "responses": {"200": {"description": "Prometheus text format",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }},
    "/callbacks/{channel}": {"post": {
        "operationId": "channel_callback", "tags": ["callbacks"], "security": [],
        "summary": "A payment channel's notification (the channel's own protocol and signature)",
        "description": "Alipay posts a signed form and is answered `success` (or `fail`); WeChat Pay posts "
                       "an AEAD envelope and is answered 204; the sandbox posts signed JSON. A forged, malformed "
                       "or stale notification changes nothing and gets the channel's failure reply. Bodies over "
                       "2.5 MB are 413.",
        "parameters": [{"name": "channel", "in": "path", "required": True,
                        "schema": {"type": "string", "enum": list(CHANNEL_NAMES)}}],
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {}}, "application/x-www-form-urlencoded": {"schema": {}},
        }},
        "responses": {
            "200": {"description": "Accepted (Alipay: `success`; sandbox: `{\"received\": true}`)",
                    "content": {**TEXT, "application/json": {"schema": {}}}},
            "204": {"description": "Accepted (WeChat Pay)"},
            "400": {"description": "Refused: the channel's failure reply",
                    "content": {**TEXT, "application/json": {"schema": {}}}},
            "401": {"description": "Refused (WeChat Pay's failure reply)",
                    "content": {"application/json": {"schema": {}}}},
            "404": {"description": "No such channel on this deployment", "content": {"text/html": {"schema": {}}}},
            "413": {"description": "Too large: the channel's failure reply",
                    "content": {**TEXT, "application/json": {"schema": {}}}},
        },
    }},
}


def _order_create_limits(schema: dict[str, Any]) -> None:
    """Channels and currencies as this deployment takes them: a schema-valid create is one the API accepts."""
    request = schema["components"]["schemas"].get("OrderCreateRequest")
    if request is None:
        return
    enabled = [name for name in CHANNEL_NAMES if name in available_channels()] or list(CHANNEL_NAMES)
    by_channel = {name: sorted(currencies(name)) if name in available_channels() else ["CNY"] for name in enabled}
    props = request["properties"]
    props["channel"] = {"type": "string", "enum": enabled,
                        "description": "A channel enabled on this deployment (of alipay, wechatpay, sandbox)"}
    props["currency"] = {"type": "string", "enum": sorted({c for cs in by_channel.values() for c in cs}),
                         "description": "CNY on every channel; the sandbox also takes USD, EUR and JPY"}
    props["amount"]["maximum"] = settings.DEFAULT_PER_ORDER_LIMIT
    # What the serializer refuses beyond lengths: NUL anywhere, more than 20 metadata keys, keys over 40.
    no_nul = r"^[^\x00]*$"
    props["description"]["pattern"] = no_nul
    props["metadata"].update(maxProperties=20, propertyNames={"maxLength": 40, "pattern": no_nul})
    props["metadata"]["additionalProperties"] = {**props["metadata"]["additionalProperties"], "pattern": no_nul}
    refund = schema["components"]["schemas"].get("RefundCreateRequest")
    if refund is not None:
        refund["properties"]["reason"]["pattern"] = no_nul
    if len({tuple(cs) for cs in by_channel.values()}) > 1:
        request["oneOf"] = [{"properties": {"channel": {"enum": [name]}, "currency": {"enum": cs}}}
                            for name, cs in by_channel.items()]


def postprocess(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """SPECTACULAR_SETTINGS' POSTPROCESSING_HOOKS: what annotations cannot say."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    for name, component in schemas.items():
        if name.endswith("Request") and component.get("type") == "object":
            component["additionalProperties"] = False  # unknown parameters are refused (parameter_unknown)
    _order_create_limits(result)
    operations = {op["operationId"]: op for item in result.get("paths", {}).values()
                  for op in item.values() if isinstance(op, dict) and "operationId" in op}
    for operation_id, by_status in LINKS.items():
        responses = operations.get(operation_id, {}).get("responses", {})
        for status, links in by_status.items():
            if status in responses:
                responses[status]["links"] = {
                    name: {"operationId": target, "parameters": parameters}
                    for name, (target, parameters) in links.items() if target in operations
                }
    result.setdefault("paths", {}).update(OPERATIONS_PATHS)
    return result
