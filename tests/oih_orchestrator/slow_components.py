"""Components of the orchestrator tests (entry point
`tests.oih_orchestrator.slow_components:component`).

`slow_sink` records like the sink built-in; a message with `data.n >= 100` is first announced
in `<sink file>.busy` and then takes `config.seconds` (default 1.5), so a test can stop the
flow while the worker is busy with it."""

from __future__ import annotations

import json
import time
from typing import Any

from oih_builtins.sink import sink, sink_path
from oih_sdk import Component, Message

component = Component("slow-sink")


@component.action("slow_sink")
def slow_sink(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> None:
    if float(message.data.get("n", 0)) >= 100:
        seconds = float(config.get("seconds", 1.5))
        busy = sink_path(message.flow_id, message.step_id).with_suffix(".busy")
        busy.parent.mkdir(parents=True, exist_ok=True)
        with busy.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"execution_id": message.execution_id}) + "\n")
        time.sleep(seconds)
    sink(message, config, snapshot)
