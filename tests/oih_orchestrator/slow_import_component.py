"""A component whose module takes IMPORT_SECONDS to import: a start of its flow is in progress
for that long (entry point
`tests.oih_orchestrator.slow_import_component:component`)."""

from __future__ import annotations

import time
from typing import Any

from oih_sdk import Component, Message

component = Component("slow-import")

IMPORT_SECONDS = 4.0

time.sleep(IMPORT_SECONDS)


@component.action("sink")
def sink(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> None:
    """Takes every message, emits nothing."""
