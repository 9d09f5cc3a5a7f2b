"""The error envelope of API.md, and the mapping of every exception a view can raise onto it."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DataError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response

from channels.base import ChannelError
from payments import idempotency
from payments.observability import current_trace_id
from payments.services.errors import DuplicateError, NoEndpoint, OrderStateError, RefundExceedsAmount

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(
        self, status_code: int, type: str, code: str, message: str, *, param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code, self.type, self.code, self.message, self.param = status_code, type, code, message, param
        self.headers = headers or {}


def invalid(code: str, message: str, param: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request_error", code, message, param=param)


def not_found(what: str = "object") -> ApiError:
    return ApiError(404, "invalid_request_error", "not_found", f"no such {what}")


def too_large(limit: int) -> ApiError:
    return ApiError(413, "invalid_request_error", "request_too_large",
                    f"the request body is larger than {limit} bytes")


def _envelope_body(error: ApiError) -> dict[str, Any]:
    # Every error has the same five keys (API.md); ``param`` is null when no single field is at fault.
    return {"error": {
        "type": error.type, "code": error.code, "message": error.message, "param": error.param,
        "trace_id": current_trace_id(),
    }}


def envelope(error: ApiError) -> Response:
    return Response(_envelope_body(error), status=error.status_code, headers=error.headers)


def envelope_response(error: ApiError) -> HttpResponse:
    """The envelope as a plain Django response, for refusals made outside DRF (middleware, error handlers)."""
    response = JsonResponse(_envelope_body(error), status=error.status_code)
    for name, value in error.headers.items():
        response[name] = value
    return response


def is_api_path(request: HttpRequest) -> bool:
    return request.path_info.startswith("/api/")


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 404 for paths no view matched: the envelope under /api/, the HTML page elsewhere (admin)."""
    if is_api_path(request):
        return envelope_response(not_found("resource"))
    return defaults.page_not_found(request, exception or Http404())


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api_path(request):
        return envelope_response(INTERNAL_ERROR)
    return defaults.server_error(request)


# DRF's own validation codes, in our words; codes our fields raise themselves pass through unchanged.
GENERIC_CODES = {"required": "parameter_missing", "null": "parameter_invalid", "blank": "parameter_invalid"} | {
    drf_code: "parameter_invalid"
    for drf_code in ("max_length", "min_length", "max_value", "min_value", "max_string_length", "not_a_dict",
                     "not_a_list", "invalid_choice", "empty", "null_characters_not_allowed")
}


def _first_validation_error(detail: Any, param: str | None = None) -> tuple[str | None, exceptions.ErrorDetail]:
    if isinstance(detail, dict):
        name, value = next(iter(detail.items()))
        # The top-level field names the parameter: a bad metadata value is ``metadata``, not its key.
        if param is None and name != "non_field_errors":
            param = name
        return _first_validation_error(value, param)
    if isinstance(detail, list):
        return _first_validation_error(detail[0], param)
    return param, detail


def from_validation_error(exc: exceptions.ValidationError) -> ApiError:
    param, detail = _first_validation_error(exc.detail)
    raw = getattr(detail, "code", "invalid") or "invalid"
    code = GENERIC_CODES.get(raw) or (raw if "_" in raw else "parameter_invalid")
    return invalid(code, str(detail), param)


def from_service_error(exc: Exception) -> ApiError | None:
    """What a service's or the idempotency layer's refusal is in the API's words (API.md's table)."""
    if isinstance(exc, OrderStateError):
        return ApiError(409, "invalid_request_error", "order_state", str(exc))
    if isinstance(exc, DuplicateError):
        return ApiError(409, "invalid_request_error", exc.code, str(exc), param=exc.param)
    if isinstance(exc, RefundExceedsAmount):
        return ApiError(422, "invalid_request_error", "refund_exceeds_amount", str(exc), param="amount")
    if isinstance(exc, NoEndpoint):
        return ApiError(409, "invalid_request_error", "no_webhook_endpoint", str(exc))
    if isinstance(exc, idempotency.KeyReused):
        return ApiError(409, "idempotency_error", "idempotency_key_reused",
                        "this Idempotency-Key was used with a different request")
    if isinstance(exc, idempotency.KeyInFlight):
        return ApiError(409, "idempotency_error", "idempotency_key_in_flight",
                        "a request with this Idempotency-Key is still being processed")
    return None


INTERNAL_ERROR = ApiError(status.HTTP_500_INTERNAL_SERVER_ERROR, "api_error", "internal_error",
                          "an internal error occurred")


def exception_handler(exc: Exception, context: dict) -> Response:
    if isinstance(exc, ApiError):
        return envelope(exc)
    refusal = from_service_error(exc)
    if refusal is not None:
        return envelope(refusal)
    if isinstance(exc, exceptions.ValidationError):
        return envelope(from_validation_error(exc))
    if isinstance(exc, (exceptions.ParseError, RecursionError)):
        return envelope(invalid("invalid_json", "the request body is not valid JSON"))
    if isinstance(exc, RequestDataTooBig):
        return envelope(too_large(settings.API_MAX_BODY_BYTES))
    if isinstance(exc, UnicodeEncodeError):
        # A lone surrogate (``"\ud800"`` is valid JSON) cannot be encoded for the database.
        return envelope(invalid("parameter_invalid", "a parameter holds text that is not valid Unicode"))
    if isinstance(exc, DataError):
        # PostgreSQL refused a value the validation let through (a NUL character, an out-of-range number):
        # the request's fault, not ours. The API middleware refuses NULs in paths and queries before this.
        log.warning("database refused a request value: %s", type(exc.__cause__ or exc).__name__)
        return envelope(invalid("parameter_invalid", "a parameter holds a value that cannot be stored"))
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return envelope(invalid("unsupported_media_type", "send JSON with Content-Type: application/json"))
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return envelope(
            ApiError(401, "authentication_error", "authentication_failed", "a valid secret key is required",
                     headers={"WWW-Authenticate": 'Bearer realm="api"'})
        )
    if isinstance(exc, (Http404, exceptions.NotFound)):
        return envelope(not_found())
    if isinstance(exc, exceptions.MethodNotAllowed):
        return envelope(ApiError(405, "invalid_request_error", "method_not_allowed", str(exc.detail)))
    if isinstance(exc, exceptions.Throttled):
        wait = max(1, int(getattr(exc, "wait", None) or 1))
        return envelope(
            ApiError(429, "rate_limit_error", "rate_limited", "too many requests; slow down",
                     headers={"Retry-After": str(wait)})
        )
    if isinstance(exc, exceptions.PermissionDenied):
        return envelope(ApiError(403, "invalid_request_error", "permission_denied", str(exc.detail)))
    if isinstance(exc, ChannelError):
        log.warning("channel error answered to merchant: %s", exc.code)
        return envelope(
            ApiError(502, "channel_error", exc.code, "the payment channel is unavailable; retry with the same key")
        )
    if isinstance(exc, OperationalError):
        log.exception("database unavailable")
        return envelope(
            ApiError(503, "api_error", "service_unavailable", "the service is unavailable; retry with the same key")
        )
    log.exception("unhandled error in API view")
    return envelope(INTERNAL_ERROR)
