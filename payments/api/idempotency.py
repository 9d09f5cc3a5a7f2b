"""``Idempotency-Key`` on the API's POSTs (API.md): each key's request runs once, and repeats get its answer.

Two strategies, one per kind of view (``payments.idempotency`` explains the mechanisms):

- ``StoredWithRows``: the view only writes to the database. Its service stores the key's answer with its own
  rows, in one transaction, so a crash leaves neither, and the key's unique constraint makes a concurrent
  repeat wait, then replay. Answers the service did not store (errors, an existing object) are stored after
  the view returns.
- ``HeldByLock``: the view calls a channel and must not hold a transaction. The key is locked while it runs
  and its answer is stored after it returns; one lost to a crash only means the (idempotent) call runs again.

The view owns the answer (status and body); the stored answer is what the view rendered.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments import idempotency
from payments.api.auth import merchant_of
from payments.api.errors import exception_handler, invalid
from payments.api.parsers import loads_bounded
from payments.idempotency import Claim

IDEMPOTENCY_KEY_MAX = 255


@dataclass(frozen=True)
class Created:
    """The answer to a POST that created an object: 201 and the object's JSON."""

    render: Callable[[Any], dict[str, Any]]

    def __call__(self, obj: Any) -> tuple[int, dict[str, Any]]:
        return 201, self.render(obj)

    def response(self, obj: Any) -> Response:
        return Response(self.render(obj), status=201)


def fingerprint(request: Request) -> str:
    """What makes two requests the same: method, path and body (JSON compared by value, not by spelling)."""
    try:
        body = json.dumps(loads_bounded(request.body or b"null"), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:  # not JSON, or nested too deeply: the bytes themselves (the parser refuses the body)
        body = request.body
    return hashlib.sha256(f"{request.method} {request.path}\n".encode() + body).hexdigest()


class KeyedPost:
    """One POST under an Idempotency-Key."""

    def __init__(self, view: APIView, request: Request, key: str) -> None:
        self.view, self.request, self.key = view, request, key
        self.merchant = merchant_of(request)
        self.fingerprint = fingerprint(request)

    def replay(self) -> Response | None:
        stored = idempotency.idempotency_lookup(merchant=self.merchant, key=self.key, fingerprint=self.fingerprint)
        if stored is None:
            return None
        return Response(stored.body, status=stored.status, headers={"Idempotent-Replayed": "true"})

    def store(self, response: Response) -> None:
        # A 5xx is our failure, not an answer: keep nothing, so that a retry runs again.
        if response.status_code < 500:
            idempotency.idempotency_save(merchant=self.merchant, key=self.key, fingerprint=self.fingerprint,
                                         status=response.status_code, body=response.data)

    def answer(self, call: Callable[[], Response]) -> Response:
        """The view's answer, an error's included: an error is an answer to store like any other."""
        try:
            return call()
        except idempotency.KeyAnswered:
            raise
        except Exception as exc:
            return exception_handler(exc, {"view": self.view, "request": self.request})


class StoredWithRows(KeyedPost):
    def run(self, view: Callable[[Claim | None], Response], render: Created) -> Response:
        for _ in range(2):  # a second time only if the stored answer had expired (and is now deleted)
            claim = Claim(merchant=self.merchant, key=self.key, fingerprint=self.fingerprint, render=render)
            try:
                response = self.answer(lambda: view(claim))  # noqa: B023 (called before the next iteration)
                if not claim.answered:
                    self.store(response)  # may find the answer of a concurrent repeat: replay that one
                return response
            except idempotency.KeyAnswered:
                replayed = self.replay()
                if replayed is not None:
                    return replayed
        raise idempotency.KeyInFlight()


class HeldByLock(KeyedPost):
    def run(self, view: Callable[[], Response]) -> Response:
        with idempotency.idempotency_key_lock(merchant=self.merchant, key=self.key):
            replayed = self.replay()
            if replayed is not None:
                return replayed
            response = self.answer(view)
            try:
                self.store(response)
            except idempotency.KeyAnswered:
                # A request with this key that does not take the lock (order and refund create store their
                # answer with their rows) answered it while this one ran. The key is that request's: answer what
                # a repeat of this one gets (409 idempotency_key_reused), not a 500.
                return self.replay() or response
            return response


def _key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and (not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX or not key.isprintable()):
        raise invalid("idempotency_key_invalid", "Idempotency-Key must be 1-255 printable characters",
                      "Idempotency-Key")
    return key


ViewMethod = Callable[..., Response]


def stored_with_rows(render: Created) -> Callable[[ViewMethod], ViewMethod]:
    """For a POST that only writes: the view gets ``idempotency_key`` (a ``Claim``, None without a key) to pass
    to its service, and answers ``render(obj)`` for the object it created."""

    def decorate(view: ViewMethod) -> ViewMethod:
        @functools.wraps(view)
        def wrapper(self: APIView, request: Request, *args: Any, **kwargs: Any) -> Response:
            key = _key(request)
            if key is None:
                return view(self, request, *args, idempotency_key=None, **kwargs)
            return StoredWithRows(self, request, key).run(
                lambda claim: view(self, request, *args, idempotency_key=claim, **kwargs), render
            )

        return wrapper

    return decorate


def held_by_lock(view: ViewMethod) -> ViewMethod:
    """For a POST that calls a channel: the key is locked while the view runs."""

    @functools.wraps(view)
    def wrapper(self: APIView, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = _key(request)
        if key is None:
            return view(self, request, *args, **kwargs)
        return HeldByLock(self, request, key).run(lambda: view(self, request, *args, **kwargs))

    return wrapper
