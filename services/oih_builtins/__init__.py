"""The built-in components, each a module exposing `component`.

`BUILTIN_COMPONENTS` describes them for the orchestrator, which registers them in the Component
Repository at start (a `PythonEntryPoint` with `object_reference` = `entry_point`, the triggers
and actions with their optional config JSON schemas).
"""

from __future__ import annotations

import importlib
from typing import Any

# component name -> module (component names may contain '-', module names may not).
MODULES = {
    "trigger": "oih_builtins.trigger",
    "timer": "oih_builtins.timer",
    "transform": "oih_builtins.transform",
    "filter": "oih_builtins.filter",
    "split": "oih_builtins.split",
    "http-request": "oih_builtins.http_request",
    "http-poll": "oih_builtins.http_poll",
    "sink": "oih_builtins.sink",
    "log": "oih_builtins.log",
    "reply": "oih_builtins.reply",
}


def describe(name: str, module: str) -> dict[str, Any]:
    component = importlib.import_module(module).component
    functions = [{"name": fn.name, "kind": fn.kind, "description": fn.description,
                  "config_schema": fn.config_schema}
                 for fn in component.functions.values()]
    return {
        "name": name,
        "description": component.description,
        "version": component.version,
        "entry_point": f"{module}:component",
        "triggers": [fn for fn in functions if fn["kind"] == "trigger"],
        "actions": [fn for fn in functions if fn["kind"] == "action"],
    }


BUILTIN_COMPONENTS: list[dict[str, Any]] = [describe(name, module)
                                            for name, module in MODULES.items()]
