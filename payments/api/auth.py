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


# Keys that authenticated, by hash, with when they were read: (read at, key with its merchant).
_known_keys: dict[str, tuple[float, ApiKey]] = {}
KNOWN_KEYS_MAX = 10_000


def _active_key(key_hash: str) -> ApiKey | None:
    """The active key with this hash, read at most once per ``API_KEY_CACHE_TTL_S`` per process.

    Read on every request, it was one more database round trip on every call, and keys change rarely: a
    revoked key, or a deactivated merchant, is refused by every process within the TTL (the README says so).
    Only keys that authenticated are kept, so a new key works at once and a guessed one is read every time.
    """
    now = time.monotonic()
    known = _known_keys.get(key_hash)
    if known is not None and now - known[0] < settings.API_KEY_CACHE_TTL_S:
        return known[1]
    try:
        # key_hash is unique: .get() needs no ORDER BY / LIMIT.
        key = ApiKey.objects.select_related("merchant").get(
            key_hash=key_hash, revoked_at__isnull=True, merchant__is_active=True
        )
    except ApiKey.DoesNotExist:
        _known_keys.pop(key_hash, None)
        return None
    if len(_known_keys) >= KNOWN_KEYS_MAX:
        _known_keys.clear()  # rare (as many live keys as that in one process): start over rather than evict
    _known_keys[key_hash] = (now, key)
    return key


def forget_keys() -> None:
    """Drop what this process knows of keys and holds of rate limits (between tests)."""
    _known_keys.clear()
    _leases.clear()


def merchant_of(request: Request) -> Merchant:
    """The merchant a request authenticated as (views behind ``ApiKeyAuthentication`` only)."""
    merchant = request.user
    if not isinstance(merchant, Merchant):
        raise exceptions.NotAuthenticated()
    return merchant


def is_live(request: Request) -> bool:
    """Whether the request came with a live key (``sk_live_…``): live mode asks more of merchant URLs."""
    key = request.auth
    return isinstance(key, ApiKey) and key.prefix.startswith("sk_live_")


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Merchant, ApiKey] | None:
        header = request.headers.get("Authorization", "")
        scheme, _, secret_key = header.partition(" ")
        if scheme.lower() != "bearer" or not secret_key.strip():
            raise exceptions.NotAuthenticated()
        key = _active_key(hash_key(secret_key.strip()))
        if key is None:
            raise exceptions.AuthenticationFailed()
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


# Tokens this process has reserved in Redis and not used yet: {merchant pk: (window, tokens)}.
_leases: dict[int, tuple[int, int]] = {}
_leases_lock = threading.Lock()


def _window() -> int:
    return int(time.time())


def _take_token(merchant: Merchant) -> bool:
    """One request's worth of the merchant's per-second limit, counted in Redis across all processes.

    A process reserves tokens in leases of ``1 / RATE_LIMIT_LEASES_PER_S`` of the limit (two tokens for the
    default limit of 100/s), so that a merchant sending thousands of requests a second costs one Redis round
    trip per lease, not per request. The limit is never exceeded; a token leased and not used lapses with
    its window, so a merchant at its limit may be refused a little before it (at most one lease per process).
    """
    window = _window()
    with _leases_lock:
        held_window, tokens = _leases.get(merchant.pk, (window, 0))
        if held_window == window and tokens > 0:
            _leases[merchant.pk] = (window, tokens - 1)
            return True
    limit = merchant.rate_limit_per_s
    lease = max(1, limit // settings.RATE_LIMIT_LEASES_PER_S)
    key = f"ratelimit:{merchant.pk}:{window}"
    total = _redis().incrby(key, lease)
    if total == lease:  # the window's first lease sets its expiry: one round trip for the others
        _redis().expire(key, 2)
    granted = min(lease, max(0, limit - (total - lease)))
    if granted == 0:
        return False
    with _leases_lock:
        if len(_leases) > KNOWN_KEYS_MAX:
            _leases.clear()
        held_window, tokens = _leases.get(merchant.pk, (window, 0))
        _leases[merchant.pk] = (window, (tokens if held_window == window else 0) + granted - 1)
    return True


class MerchantRateThrottle(throttling.BaseThrottle):
    """A fixed one-second window per merchant, counted in Redis. If Redis is down the API stays up (fails
    open): losing the limit for a while is better than refusing payments."""

    def allow_request(self, request: Request, view: object) -> bool:
        merchant = request.user
        if not isinstance(merchant, Merchant):
            return True
        try:
            return _take_token(merchant)
        except redis.RedisError:
            log.warning("rate limiter unavailable; allowing request")
            return True

    def wait(self) -> float:
        return 1.0
