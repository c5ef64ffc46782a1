"""Components of the fault tests (entry point `tests.faults.components:component`).

- `work`: takes `config.seconds` per message (so a backlog builds up), passes `data` on.
- `picky`: fails as `data.kind` says — `error` (retryable), `fatal` (non-retryable),
  `not-a-dict` (emits something a function may not emit); anything else passes on.
"""

from __future__ import annotations

import time
from typing import Any

from oih_sdk import Component, Message, NonRetryableError

component = Component("faults")


@component.action("work")
def work(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> dict[str, Any]:
    time.sleep(float(config.get("seconds", 0.01)))
    return dict(message.data)


class Fatal(NonRetryableError):
    """Retrying cannot help this message."""


@component.action("picky")
def picky(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> Any:
    kind = message.data.get("kind")
    if kind == "error":
        raise RuntimeError("the remote system said no")
    if kind == "fatal":
        raise Fatal("this record can never be processed")
    if kind == "not-a-dict":
        return 42
    return dict(message.data)
