"""Merchants and their secret keys. A key is shown once, when it is made, and stored only as a hash."""

from __future__ import annotations

import base64
import hashlib
import secrets

from django.db import transaction
from django.utils import timezone

from payments.models import ApiKey, Merchant


def hash_key(secret_key: str) -> str:
    return hashlib.sha256(secret_key.encode()).hexdigest()


def merchant_create(*, name: str, live: bool = False) -> tuple[Merchant, str]:
    """A merchant and its first secret key. The key is returned once and stored only as a hash."""
    with transaction.atomic():
        merchant = Merchant.objects.create(name=name, webhook_secret=_new_webhook_secret())
        secret_key = api_key_create(merchant=merchant, live=live)
    return merchant, secret_key


def _new_webhook_secret() -> str:
    # Standard Webhooks' form: "whsec_" and the base64 of the HMAC key.
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def api_key_create(*, merchant: Merchant, live: bool = False, scopes: list[str] | None = None) -> str:
    secret_key = ("sk_live_" if live else "sk_test_") + secrets.token_urlsafe(24)
    ApiKey.objects.create(merchant=merchant, prefix=secret_key[:12], key_hash=hash_key(secret_key), scopes=scopes or [])
    return secret_key


def api_key_rotate(*, merchant: Merchant) -> str:
    """Revoke every active key of the merchant and issue a new one."""
    with transaction.atomic():
        merchant.api_keys.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        return api_key_create(merchant=merchant, live=False)
