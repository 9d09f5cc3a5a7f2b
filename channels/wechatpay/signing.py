"""WeChat Pay API v3 signatures and the AEAD envelope of its notifications.

Shared by the adapter and the simulator so that both sides sign the same bytes. The published rules:
- a request carries ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",signature="…",
  timestamp="…",serial_no="…"``, the signature being SHA256-with-RSA (PKCS#1 v1.5) by the merchant's key over
  ``METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n`` (URL: path and query as sent; BODY empty for GET);
- an answer or a notification carries ``Wechatpay-Timestamp``, ``-Nonce``, ``-Signature``, ``-Serial`` and
  ``-Signature-Type``, signed by the platform's key over ``TIMESTAMP\\nNONCE\\nBODY\\n``. In the platform public
  key mode ``Wechatpay-Serial`` is the public key's id (``PUB_KEY_ID_…``);
- a notification's ``resource`` is AEAD_AES_256_GCM under the merchant's 32-byte APIv3 key, with the resource's
  ``nonce`` (12 characters) and ``associated_data``; ``ciphertext`` is base64 of ciphertext plus the 16-byte tag.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# Part of this module's API: keys, and SHA256withRSA signatures over the messages built here.
from channels.rsa import (  # noqa: F401
    load_private_key,
    load_public_key,
    private_pem,
    public_pem,
    sign,
    verify,
)

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
ALGORITHM = "AEAD_AES_256_GCM"
MAX_SKEW_S = 300

TIMESTAMP_HEADER = "Wechatpay-Timestamp"
NONCE_HEADER = "Wechatpay-Nonce"
SIGNATURE_HEADER = "Wechatpay-Signature"
SERIAL_HEADER = "Wechatpay-Serial"
SIGNATURE_TYPE_HEADER = "Wechatpay-Signature-Type"

_AUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')


# -- keys ------------------------------------------------------------------------------------------------


def new_nonce() -> str:
    return secrets.token_hex(16).upper()


def request_message(method: str, url: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{method.upper()}\n{url}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"


def answer_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    """What an answer's or a notification's signature covers."""
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def timestamp_fresh(timestamp: str | None, now: float | None = None) -> bool:
    try:
        ts = int(timestamp or "")
    except ValueError:
        return False
    return abs((now if now is not None else time.time()) - ts) <= MAX_SKEW_S


def authorization(
    *, mchid: str, serial_no: str, key: rsa.RSAPrivateKey, method: str, url: str, body: bytes,
    timestamp: str | None = None, nonce: str | None = None,
) -> str:
    """The ``Authorization`` header of a request to ``url`` (path and query, exactly as sent)."""
    timestamp = timestamp or str(int(time.time()))
    nonce = nonce or new_nonce()
    signature = sign(key, request_message(method, url, timestamp, nonce, body))
    return (
        f'{SCHEMA} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
        f'timestamp="{timestamp}",serial_no="{serial_no}"'
    )


def parse_authorization(header: str | None) -> dict[str, str] | None:
    """The parameters of an ``Authorization`` header, or None if it is not WeChat Pay's schema."""
    schema, _, params = (header or "").strip().partition(" ")
    if schema != SCHEMA:
        return None
    return dict(_AUTH_PARAM.findall(params))


def signed_headers(
    key: rsa.RSAPrivateKey, key_id: str, body: bytes, *, timestamp: str | None = None, nonce: str | None = None
) -> dict[str, str]:
    """The ``Wechatpay-*`` headers of an answer or a notification with ``body``."""
    timestamp = timestamp or str(int(time.time()))
    nonce = nonce or new_nonce()
    return {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: sign(key, answer_message(timestamp, nonce, body)),
        SERIAL_HEADER: key_id,
        SIGNATURE_TYPE_HEADER: SCHEMA,
    }


def check_signed(
    key: rsa.RSAPublicKey, key_id: str, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> str | None:
    """Why an answer or a notification must not be trusted, or None if it verifies.

    ``headers`` must answer lower-case names (httpx's headers do; lower-case a plain dict first).
    """
    timestamp = headers.get(TIMESTAMP_HEADER.lower())
    nonce = headers.get(NONCE_HEADER.lower())
    signature = headers.get(SIGNATURE_HEADER.lower())
    if not (timestamp and nonce and signature and headers.get(SERIAL_HEADER.lower())):
        return "missing_signature"
    if headers.get(SIGNATURE_TYPE_HEADER.lower(), SCHEMA) != SCHEMA:
        return "bad_signature_type"
    if headers.get(SERIAL_HEADER.lower()) != key_id:
        # Signed with a key we do not hold (or a rotated one we were not told of): nothing to verify with.
        return "unknown_serial"
    if not timestamp_fresh(timestamp, now):
        return "stale_timestamp"
    if not verify(key, answer_message(timestamp, nonce, body), signature):
        return "bad_signature"
    return None


# -- AEAD_AES_256_GCM ------------------------------------------------------------------------------------


def encrypt(apiv3_key: str, plaintext: bytes, associated_data: str, nonce: str | None = None) -> dict[str, str]:
    """A notification ``resource`` (without ``original_type``) holding ``plaintext``."""
    nonce = nonce or secrets.token_urlsafe(9)  # 12 characters, as the channel sends
    sealed = AESGCM(apiv3_key.encode()).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return {
        "algorithm": ALGORITHM,
        "ciphertext": base64.b64encode(sealed).decode(),
        "associated_data": associated_data,
        "nonce": nonce,
    }


def decrypt(apiv3_key: str, resource: Mapping[str, str]) -> bytes:
    """The plaintext of a notification ``resource``; ValueError if it is not authentic."""
    if resource.get("algorithm") != ALGORITHM:
        raise ValueError("unsupported algorithm")
    try:
        return AESGCM(apiv3_key.encode()).decrypt(
            str(resource["nonce"]).encode(),
            base64.b64decode(resource["ciphertext"], validate=True),
            str(resource.get("associated_data") or "").encode(),
        )
    except (InvalidTag, KeyError, TypeError) as exc:
        raise ValueError("resource does not decrypt") from exc
