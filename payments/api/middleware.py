"""Refusals made before any view runs, for every path under ``/api/``: each answers the error envelope.

- A NUL character in the path or the query string: PostgreSQL cannot store or compare one in text
  (``psycopg.DataError``), and no id, number or filter of the API holds one.
- A body over ``API_MAX_BODY_BYTES``: refused from its ``Content-Length`` before it is read. A chunked body
  (no ``Content-Length``; gunicorn passes it through, Django alone would read it as empty) is read up to the
  limit here, then given to the view as if its length had been sent.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from django.conf import settings
from django.core.handlers.wsgi import LimitedStream
from django.http import HttpRequest, HttpResponse

from payments.api.errors import envelope_response, invalid, is_api_path, too_large


class ApiRequestGuardMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not is_api_path(request):
            return self.get_response(request)
        query = request.META.get("QUERY_STRING", "")
        if "\x00" in request.path_info or "%00" in query or "\x00" in query:
            return envelope_response(invalid("parameter_invalid", "a path or query value holds a NUL character"))
        limit = settings.API_MAX_BODY_BYTES
        length = request.META.get("CONTENT_LENGTH")
        if length:
            if not length.isdigit():
                return envelope_response(invalid("invalid_request", "Content-Length is not a number"))
            if int(length) > limit:
                return envelope_response(too_large(limit))
        elif "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
            refusal = _read_chunked(request, limit)
            if refusal is not None:
                return refusal
        return self.get_response(request)


class WsgiPathInfoMiddleware:
    """Puts ``PATH_INFO`` back into its WSGI form (PEP 3333: the raw bytes as latin-1), which Django replaced with
    the decoded path and OpenTelemetry's middleware reads to name the URL."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.META.get("PATH_INFO", "")
        if not path.isascii():
            request.META["PATH_INFO"] = path.encode("utf-8", "surrogateescape").decode("latin-1")
        return self.get_response(request)


def _read_chunked(request: HttpRequest, limit: int) -> HttpResponse | None:
    """Read a chunked body (the server de-chunks it: ``wsgi.input_terminated``) up to ``limit`` bytes."""
    stream = request.META.get("wsgi.input")
    if stream is None or not request.META.get("wsgi.input_terminated"):
        return None  # a server that cannot give us the body: Django reads it as empty, and validation refuses it
    body = stream.read(limit + 1)
    if len(body) > limit:
        return envelope_response(too_large(limit))
    request.META["CONTENT_LENGTH"] = str(len(body))
    request._stream = LimitedStream(io.BytesIO(body), len(body))  # type: ignore[assignment]  # Django's own
    return None
