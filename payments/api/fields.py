"""Strict input fields: money is a JSON integer, never a float or a string."""

from __future__ import annotations

import copy
import re
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from channels.registry import CHANNEL_NAMES, available_channels, currencies

MERCHANT_NO = re.compile(r"^[A-Za-z0-9_\-.:]{1,64}$")


class StrictIntegerField(serializers.IntegerField):
    """Only a JSON integer: DRF's IntegerField would also take ``"10"`` and ``10.0``."""

    def __init__(self, *, invalid_code: str = "parameter_invalid", **kwargs: Any) -> None:
        self.invalid_code = invalid_code
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise serializers.ValidationError(f"{self.field_name} must be an integer", code=self.invalid_code)
        if self.min_value is not None and data < self.min_value or self.max_value is not None and data > self.max_value:
            raise serializers.ValidationError(
                f"{self.field_name} must be from {self.min_value} to {self.max_value}", code=self.invalid_code
            )
        return data


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": settings.DEFAULT_PER_ORDER_LIMIT,
                      "description": "Minor units of the currency, up to the merchant's per-order limit"})
class AmountField(StrictIntegerField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(invalid_code="amount_invalid", min_value=1, **kwargs)

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int) or data < 1:
            raise serializers.ValidationError("amount must be a positive integer in minor units", code="amount_invalid")
        limit = getattr(self.context.get("merchant"), "per_order_limit", settings.DEFAULT_PER_ORDER_LIMIT)
        if data > limit:
            raise serializers.ValidationError(f"amount must not exceed {limit}", code="amount_invalid")
        return data


@extend_schema_field({"type": "string", "pattern": MERCHANT_NO.pattern, "minLength": 1, "maxLength": 64})
class MerchantNumberField(serializers.CharField):
    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str) or not MERCHANT_NO.match(data):
            raise serializers.ValidationError(
                f"{self.field_name} must be 1-64 letters, digits or _-.:", code="parameter_invalid"
            )
        return data


class StrictCharField(serializers.CharField):
    """A string, not a number coerced to one."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError(f"{self.field_name or 'each value'} must be a string",
                                              code="parameter_invalid")
        return super().to_internal_value(data)


def field_error(param: str, message: str, code: str) -> dict[str, list[serializers.ErrorDetail]]:
    """A validation error about ``param``, in the shape DRF gives its own (a dict of lists)."""
    return {param: [serializers.ErrorDetail(message, code=code)]}


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know: a typo must not be silently ignored on a payments API."""

    def get_fields(self) -> dict[str, serializers.Field]:
        # DRF deep-copies every declared field for every serializer it builds: on a create that was a sixth
        # of the request's CPU. A shallow copy is enough for input fields: validating one only sets what
        # bind() sets, on the copy, and reads the rest (a DictField's child is bound to the declared field,
        # so it reads no context).
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            # As a dict of non-field errors, like DRF's own: a bare message here would make ``.errors`` crash.
            raise serializers.ValidationError(
                field_error("non_field_errors", "the body must be a JSON object", "parameter_invalid")
            )
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(field_error(unknown[0], f"unknown parameter {unknown[0]}",
                                                          "parameter_unknown"))
        return super().to_internal_value(data)


def validate_channel_currency(attrs: dict[str, Any]) -> None:
    channel, currency = attrs["channel"], attrs["currency"]
    if channel not in CHANNEL_NAMES:
        raise serializers.ValidationError(
            field_error("channel", f"channel must be one of {', '.join(CHANNEL_NAMES)}", "channel_invalid"))
    if channel not in available_channels():
        raise serializers.ValidationError(
            field_error("channel", f"channel {channel} is not enabled", "channel_unavailable"))
    if currency not in currencies(channel):
        raise serializers.ValidationError(
            field_error("currency", f"currency {currency} is not supported on {channel}", "currency_unsupported"))
