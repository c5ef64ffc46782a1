"""`reply`: answers the synchronous webhook request that started the execution.

Config: `status` (HTTP status, default 200), `headers` (an object of header names to values),
`content_type` (default `application/json`), and `body`, a JSONata expression over the
message's `data` (default: `data` itself as JSON). The message passes on unchanged, so steps
after the reply keep working in the background. Without a waiting request (an ASYNC webhook,
`:execute`, the scheduler) the reply is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from oih_sdk import Message, NonRetryableError, Reply

from ._jsonata import compiled
from ._meta import builtin

component = builtin("reply", "Answers a synchronous webhook request (status, headers, body).")

SCHEMA = {"type": "object", "properties": {
    "status": {"type": "integer", "minimum": 200, "maximum": 599},
    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
    "content_type": {"type": "string"},
    "body": {"type": "string", "description": "JSONata over data; default: data"},
}}


class ReplyError(NonRetryableError):
    pass


@component.action("reply", description="HTTP answer := (status, headers, JSONata(body, data))",
                  config_schema=SCHEMA)
def reply(message: Message, config: dict[str, Any],
          snapshot: dict[str, Any]) -> Iterator[Reply | Message]:
    status = config.get("status", 200)
    headers = config.get("headers") or {}
    if not isinstance(status, int | float) or not 200 <= int(status) <= 599:
        raise ReplyError("config.status must be an HTTP status from 200 to 599")
    if not isinstance(headers, dict):
        raise ReplyError("config.headers must be an object")
    body: Any = message.data
    if config.get("body"):
        try:
            body = compiled(str(config["body"])).evaluate(message.data)
        except Exception as exc:
            raise ReplyError(f"config.body: {exc}") from exc
    yield Reply(status=int(status), headers={str(k): str(v) for k, v in headers.items()},
                body=body, content_type=str(config.get("content_type") or ""))
    yield message
