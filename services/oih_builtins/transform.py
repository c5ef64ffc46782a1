"""`transform`: reshapes `data` with a JSONata expression (config `expression`).

The expression sees `data`'s fields at the top level (as in OIH's JSONata transformer). A
result that is not an object is wrapped as `{"value": result}`; no result emits nothing.
"""

from __future__ import annotations

from typing import Any

from oih_sdk import Message, NonRetryableError

from ._jsonata import compiled
from ._meta import builtin

component = builtin("transform", "Reshapes each message with a JSONata expression.")

SCHEMA = {"type": "object", "required": ["expression"],
          "properties": {"expression": {"type": "string", "description": "JSONata"}}}


class TransformError(NonRetryableError):
    pass


@component.action("transform", description="data := JSONata(expression, data)",
                  config_schema=SCHEMA)
def transform(message: Message, config: dict[str, Any],
              snapshot: dict[str, Any]) -> dict[str, Any] | None:
    expression = compiled(config.get("expression", "$"))
    try:
        result = expression.evaluate(message.data)
    except Exception as exc:
        raise TransformError(str(exc)) from exc
    if result is None:
        return None
    return result if isinstance(result, dict) else {"value": result}
