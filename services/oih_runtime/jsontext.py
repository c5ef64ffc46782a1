"""Trigger payloads as JSON text, parsed without protobuf.

A `google.protobuf.Struct` holds every number as a double: `21` becomes `21.0` and an integer
beyond 2^53 loses digits. Payloads on the trigger path therefore travel as JSON text and are
parsed here with Python's `json`, which keeps integers exact (and strings untouched).
"""

from __future__ import annotations

import json
from typing import Any

from oih_runtime.errors import InvalidArgument


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(text: str | bytes) -> Any:
    """`json.loads` that refuses NaN and Infinity (not JSON, and not representable later)."""
    return json.loads(text, parse_constant=_refuse_constant)


def parse_object(text: str | bytes, field: str) -> dict[str, Any]:
    """A JSON object from text; INVALID_ARGUMENT naming `field` otherwise."""
    try:
        value = loads(text)
    except (ValueError, RecursionError) as error:
        raise InvalidArgument.field(field, f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidArgument.field(field, "must be a JSON object")
    return value


def dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII characters kept as they are."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
