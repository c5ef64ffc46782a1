"""`trigger`: the first step of a manually executed or webhook-started flow; passes its input on.

The message comes from the orchestrator's execute path or the webhooks service, already in the
first step's queue; the trigger only hands it to the next steps unchanged.
"""

from __future__ import annotations

from typing import Any

from oih_sdk import Message

from ._meta import builtin

component = builtin("trigger", "Starts a flow with the data it is given (manual or webhook).")



@component.trigger("manual", description="Passes the execute/webhook input on unchanged.")
def manual(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> Message:
    return Message(data=message.data, metadata=message.metadata,
                   attachments=message.attachments)


# The same function under the name webhook flows use.
component.trigger("webhook", description="Passes the webhook request on unchanged.")(manual)
