"""RSA2 signatures of the Alipay open platform, in both directions, and the wire formats both sides share.

Shared by the adapter and the simulator so that both sign and verify the same bytes. From Alipay's documents
("签名"/"验签", opendocs.alipay.com/common/02kf5q and /02mse7):
- a request is signed over all its parameters but ``sign``: empty values dropped, sorted by key, raw (not
  URL-encoded) ``k=v`` joined with ``&``, SHA256withRSA (PKCS#1 v1.5), base64;
- an answer ``{"<method>_response": {...}, "sign": "..."}`` is signed over the exact JSON text of the
  ``<method>_response`` value as it appears in the body, so it must be cut out of the raw body, never re-serialised;
- a notification is signed like a request, but without ``sign`` and ``sign_type``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from channels import rsa as rsa_keys
from channels.base import CHINA_TIME
from channels.rsa import load_private_key, load_public_key  # noqa: F401  (part of this module's API)

REQUEST_UNSIGNED = ("sign",)
NOTIFICATION_UNSIGNED = ("sign", "sign_type")
ERROR_RESPONSE = "error_response"  # the gateway's answer when it cannot tell which app is asking (unsigned)

CST = CHINA_TIME  # Alipay's times are Beijing time
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def canonical(params: Mapping[str, str], exclude: Iterable[str] = REQUEST_UNSIGNED) -> str:
    """The string to sign: ``a=1&b=2`` over the non-empty parameters not excluded, sorted by key."""
    skip = set(exclude)
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in skip and v not in ("", None))


def sign(private_key: rsa.RSAPrivateKey, content: str, charset: str = "utf-8") -> str:
    return rsa_keys.sign(private_key, content.encode(charset))


def verify(public_key: rsa.RSAPublicKey, content: str, signature: str | None, charset: str = "utf-8") -> bool:
    try:
        message = content.encode(charset)
    except UnicodeEncodeError:
        return False
    return rsa_keys.verify(public_key, message, signature)


def response_key(method: str) -> str:
    """``alipay.trade.query`` → ``alipay_trade_query_response``."""
    return method.replace(".", "_") + "_response"


def response_body(
    method: str, payload: Mapping[str, Any], private_key: rsa.RSAPrivateKey | None, charset: str = "utf-8"
) -> bytes:
    """The gateway's answer, signed over the exact text of the ``<method>_response`` value.

    ``private_key=None`` makes the unsigned ``error_response`` the gateway gives an unknown app.
    """
    inner = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    if private_key is None:
        return f'{{"{ERROR_RESPONSE}":{inner}}}'.encode(charset)
    return f'{{"{response_key(method)}":{inner},"sign":"{sign(private_key, inner, charset)}"}}'.encode(charset)


def extract_response(text: str, method: str) -> tuple[str, str | None]:
    """(raw text of the ``<method>_response`` value, ``sign``) from an answer; ValueError if it has none.

    The value is cut out with the JSON decoder's own end position, so braces inside strings cannot fool it.
    """
    document = json.loads(text)
    if not isinstance(document, dict) or response_key(method) not in document:
        raise ValueError("no response object for this method")
    decoder = json.JSONDecoder()
    marker = f'"{response_key(method)}"'
    start = text.index(marker) + len(marker)
    start = text.index(":", start) + 1
    while text[start] in " \t\r\n":
        start += 1
    value, end = decoder.raw_decode(text, start)
    if not isinstance(value, dict):
        raise ValueError("the response object is not an object")  # noqa: TRY004 (callers catch a bad answer as ValueError)
    signature = document.get("sign")
    return text[start:end], signature if isinstance(signature, str) else None


def format_time(when: dt.datetime) -> str:
    return when.astimezone(CST).strftime(TIME_FORMAT)


def parse_time(value: str | None) -> dt.datetime | None:
    """``2026-10-03 10:00:30`` (Beijing time, sometimes with ``.320`` milliseconds) → an aware datetime."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value.strip().replace(" ", "T")).replace(tzinfo=CST)
