"""Merchant authentication by secret key, and the per-merchant rate limit."""

from __future__ import annotations

import logging
import threading
import time

import redis
from django.conf import settings
from rest_framework import authentication, exceptions, throttling
from rest_framework.request import Request

from payments.models import ApiKey, Merchant
from payments.observability import bind
from payments.services import hash_key

log = logging.getLogger(__name__)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Merchant, ApiKey] | None:
        header = request.headers.get("Authorization", "")
        scheme, _, secret_key = header.partition(" ")
        if scheme.lower() != "bearer" or not secret_key.strip():
            raise exceptions.NotAuthenticated()
        try:
            # key_hash is unique: .get() needs no ORDER BY / LIMIT.
            key = ApiKey.objects.select_related("merchant").get(
                key_hash=hash_key(secret_key.strip()), revoked_at__isnull=True, merchant__is_active=True
            )
        except ApiKey.DoesNotExist:
            raise exceptions.AuthenticationFailed() from None
        bind(merchant_id=key.merchant.public_id)  # on every log line of this request
        return key.merchant, key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


_client: redis.Redis | None = None
_client_lock = threading.Lock()


def _redis() -> redis.Redis:
    """One client per process. Built under a lock: with ``functools.cache``, concurrent first calls each
    built a client, and a losing one, once garbage collected, closed its connection pool under the thread
    still using it (``ValueError: I/O operation on closed file``, a 500 instead of a throttle decision)."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
    return _client


class MerchantRateThrottle(throttling.BaseThrottle):
    """A fixed one-second window per merchant in Redis. If Redis is down the API stays up (fails open):
    losing the limit for a while is better than refusing payments."""

    def allow_request(self, request: Request, view: object) -> bool:
        merchant = request.user
        if not isinstance(merchant, Merchant):
            return True
        window = int(time.time())
        key = f"ratelimit:{merchant.pk}:{window}"
        try:
            pipe = _redis().pipeline()
            pipe.incr(key)
            pipe.expire(key, 2)
            count = pipe.execute()[0]
        except redis.RedisError:
            log.warning("rate limiter unavailable; allowing request")
            return True
        return count <= merchant.rate_limit_per_s

    def wait(self) -> float:
        return 1.0
