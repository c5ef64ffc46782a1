from __future__ import annotations

from oih_sdk import Component

VERSION = "1.0.0"


def builtin(name: str, description: str) -> Component:
    return Component(name, description, VERSION)
