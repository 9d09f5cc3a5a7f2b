"""HMAC-SHA256 signatures of the sandbox channel (PROTOCOL.md, "Signing").

Shared by the adapter and the simulator so that both sides sign the same bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import time

MAX_SKEW_S = 300

MERCHANT_HEADER = "X-Sandbox-Merchant"
TIMESTAMP_HEADER = "X-Sandbox-Timestamp"
SIGNATURE_HEADER = "X-Sandbox-Signature"


def _hmac(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign_request(secret: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    return _hmac(secret, f"{timestamp}\n{method.upper()}\n{path}\n".encode() + body)


def sign_message(secret: str, timestamp: str, body: bytes) -> str:
    """Signature of an answer or a notification."""
    return _hmac(secret, f"{timestamp}\n".encode() + body)


def message_mac(secret: str, timestamp: str) -> hmac.HMAC:
    """``sign_message`` for a body read in pieces (a bill spooled to disk): update with the body, then hexdigest."""
    return hmac.new(secret.encode(), f"{timestamp}\n".encode(), hashlib.sha256)


def timestamp_fresh(timestamp: str, now: float | None = None) -> bool:
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    return abs((now if now is not None else time.time()) - ts) <= MAX_SKEW_S


def signatures_equal(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected, given)
