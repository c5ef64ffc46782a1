"""`split`: one output per element of the array that the JSONata `path` selects in `data`.

An element that is not an object is emitted as `{"value": element}`; a missing path emits
nothing; a single non-array value counts as a one-element array.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from oih_sdk import Message, NonRetryableError

from ._jsonata import compiled
from ._meta import builtin

component = builtin("split", "Splits an array in a message into one message per element.")

SCHEMA = {"type": "object", "required": ["path"],
          "properties": {"path": {"type": "string", "description": "JSONata to an array"}}}


class SplitError(NonRetryableError):
    pass


@component.action("split", description="One message per element of data[path].",
                  config_schema=SCHEMA)
def split(message: Message, config: dict[str, Any],
          snapshot: dict[str, Any]) -> Iterator[dict[str, Any]]:
    try:
        items = compiled(config["path"]).evaluate(message.data)
    except Exception as exc:
        raise SplitError(str(exc)) from exc
    if items is None:
        return
    for item in items if isinstance(items, list) else [items]:
        yield item if isinstance(item, dict) else {"value": item}
