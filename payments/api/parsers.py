"""The API's JSON parser: DRF's, with a depth limit.

A body nested thousands deep made ``json.loads`` (and everything after it that walks the value) raise
``RecursionError``; no request of the API nests deeper than an object holding ``metadata``.
"""

from __future__ import annotations

import json
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_JSON_DEPTH = 32


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists/objects more than ``limit`` deep (iteratively: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


class DepthLimitedJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("the JSON body is nested too deeply") from None
        if depth_exceeds(data, MAX_JSON_DEPTH):
            raise ParseError(f"the JSON body nests more than {MAX_JSON_DEPTH} levels deep")
        return data


def loads_bounded(body: bytes) -> Any:
    """``json.loads`` that raises ``ValueError`` (not ``RecursionError``) for a body nested too deeply."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if depth_exceeds(data, MAX_JSON_DEPTH):
        raise ValueError("nested too deeply")
    return data
