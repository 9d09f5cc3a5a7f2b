"""Hooks for the schemathesis run of tests/test_api_fuzz.py (loaded through SCHEMATHESIS_HOOKS).

OpenAPI 3.0 has no ``propertyNames``: the schema says metadata keys are at most 40 characters without a NUL, but a
generator need not honour it, and schemathesis's stateful phase does not. Bodies that break only that rule are
left out instead of being reported as valid data refused (the bad-input tests refuse them on purpose)."""

from __future__ import annotations

from typing import Any

import schemathesis

METADATA_KEY_MAX = 40


@schemathesis.hook
def filter_body(ctx: Any, body: Any) -> bool:
    operation = getattr(ctx, "operation", None)
    if operation is None or operation.method.upper() != "POST" or operation.path != "/api/v1/orders":
        return True
    metadata = body.get("metadata") if isinstance(body, dict) else None
    if not isinstance(metadata, dict):
        return True
    return all(isinstance(key, str) and len(key) <= METADATA_KEY_MAX and "\x00" not in key for key in metadata)
