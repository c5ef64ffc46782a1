"""A component whose module never finishes importing: its worker never consumes, as a worker
stuck on an unreachable dependency would (entry point
`tests.oih_orchestrator.hanging_component:component`).

Only worker processes import it (a test process that did would hang)."""

from __future__ import annotations

import time
from typing import Any

from oih_sdk import Component, Message

component = Component("hanging")

time.sleep(3600)


@component.action("sink")
def sink(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> None:
    """Never reached."""
