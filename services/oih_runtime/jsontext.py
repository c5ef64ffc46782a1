"""Trigger payloads as JSON text, parsed without protobuf.

A `google.protobuf.Struct` holds every number as a double: `21` becomes `21.0` and an integer
beyond 2^53 loses digits. Payloads on the trigger path therefore travel as JSON text and are
parsed here with Python's `json`, which keeps integers exact (and strings untouched).
"""

from __future__ import annotations

import json
from typing import Any

from oih_runtime.depth import MAX_JSON_DEPTH, TOO_DEEP
from oih_runtime.errors import InvalidArgument


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(text: str | bytes) -> Any:
    """`json.loads` that refuses NaN and Infinity (not JSON, and not representable later)."""
    return json.loads(text, parse_constant=_refuse_constant)


def parse_object(text: str | bytes, field: str, *, depth_field: str = "",
                 max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """A JSON object from text; INVALID_ARGUMENT naming `field` otherwise. It may nest at most
    MAX_JSON_DEPTH levels, as JSON in a Struct may (`oih_runtime.depth`: the same data is shown
    as Structs later, in the executions view); a violation names `depth_field` (default
    `field`)."""
    try:
        value = loads(text)
    except RecursionError:
        raise InvalidArgument.field(depth_field or field, TOO_DEEP) from None
    except ValueError as error:
        raise InvalidArgument.field(field, f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise InvalidArgument.field(field, "must be a JSON object")
    if depth(value) > max_depth:
        raise InvalidArgument.field(depth_field or field, TOO_DEEP)
    return value


def depth(value: Any) -> int:
    """Levels of objects and arrays (`{"a": {"b": 1}}` is 2), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII characters kept as they are."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
