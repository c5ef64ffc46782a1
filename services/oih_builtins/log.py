"""`log`: logs that a message passed (ids and the size of its data, never the data), then
passes it on unchanged."""

from __future__ import annotations

import json
import logging
from typing import Any

from oih_sdk import Message

from ._meta import builtin

component = builtin("log", "Logs message ids and sizes, and passes messages on.")
log = logging.getLogger("oih_builtins.log")


@component.action("log", description="Logs ids and the data size; passes the message on.")
def log_message(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> Message:
    log.info("message", extra={"flow_id": message.flow_id, "step_id": message.step_id,
                               "execution_id": message.execution_id, "message_id": message.id,
                               "data_bytes": len(json.dumps(message.data))})
    return Message(data=message.data, metadata=message.metadata,
                   attachments=message.attachments)
