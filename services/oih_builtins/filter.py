"""`filter`: passes a message on only when the JSONata `condition` over `data` is truthy."""

from __future__ import annotations

from typing import Any

from oih_sdk import Message, NonRetryableError

from ._jsonata import compiled
from ._meta import builtin

component = builtin("filter", "Drops messages that do not match a JSONata condition.")

SCHEMA = {"type": "object", "required": ["condition"],
          "properties": {"condition": {"type": "string", "description": "JSONata"}}}


class FilterError(NonRetryableError):
    pass


@component.action("filter", description="Passes data on when the condition holds.",
                  config_schema=SCHEMA)
def filter_(message: Message, config: dict[str, Any],
            snapshot: dict[str, Any]) -> Message | None:
    try:
        keep = compiled(config.get("condition", "true")).evaluate(message.data)
    except Exception as exc:
        raise FilterError(str(exc)) from exc
    if not keep:
        return None
    return Message(data=message.data, metadata=message.metadata,
                   attachments=message.attachments)
