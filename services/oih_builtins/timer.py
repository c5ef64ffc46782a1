"""`timer`: the first step of a cron flow.

The Scheduler owns the schedule: on each tick it publishes a message to the flow's first step
(its data may carry `fired_at`). The worker of a timer step therefore does not keep time
itself; it turns each tick into `{"fired_at": <ISO 8601 UTC>}` (the scheduler's value when
given, else the time the tick is processed) and passes it on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from oih_sdk import Message

from ._meta import builtin

component = builtin("timer", "Starts a flow on its cron schedule.")


@component.trigger("timer", description="Emits {fired_at} for every scheduler tick.")
def timer(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> dict[str, Any]:
    fired_at = message.data.get("fired_at") or datetime.now(UTC).isoformat()
    return {"fired_at": fired_at}
