"""Test components run by worker processes (entry point `tests.oih_worker.components:component`)."""

from __future__ import annotations

import time
from typing import Any

from oih_sdk import Component, Message, NonRetryableError, Snapshot

component = Component("test-components")


class Boom(RuntimeError):
    pass


@component.action("maybe_fail")
def maybe_fail(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> Any:
    if message.data.get("fatal"):
        raise NonRetryableError("fatal input")
    if message.data.get("fail"):
        raise Boom(f"failing on attempt {message.attempt}")
    return {**message.data, "attempt": message.attempt}


@component.action("slow")
def slow(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> Any:
    time.sleep(float(config.get("seconds", 0.002)))
    return message.data


@component.action("count")
def count(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> Any:
    seen = int(snapshot.get("seen", 0)) + 1
    yield {**message.data, "seen": seen}
    yield Snapshot({"seen": seen})


@component.action("fan_out")
def fan_out(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> Any:
    """`data.n` outputs, produced one at a time (a generator, like the built-in split)."""
    for i in range(int(message.data["n"])):
        yield {"i": i}
