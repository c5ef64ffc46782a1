"""What a component function receives and emits."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Message:
    """One message on a step queue (the `oih.component.v1.Message` contract plus its headers).

    Components build outputs with `Message(data=..., metadata=...)`; the id fields are filled in
    by the runtime for inputs and ignored on outputs.
    """

    data: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    attachments: dict[str, Any] = field(default_factory=dict)
    passthrough: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    flow_id: str = ""
    step_id: str = ""
    execution_id: str = ""
    parent_message_id: str = ""
    attempt: int = 1
    trace: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        """The proto3 JSON form of the contract's `Message` (lowerCamelCase, empty maps left out)."""
        out: dict[str, Any] = {"id": self.id, "data": self.data}
        if self.metadata:
            out["metadata"] = self.metadata
        if self.attachments:
            out["attachments"] = self.attachments
        if self.passthrough:
            out["passthrough"] = self.passthrough
        return out


@dataclass
class Snapshot:
    """A step's new state; the worker hands it to the next call and publishes it.

    With `execution=True` it is the state of this execution only: published for the
    execution (removed when the execution finishes) and not handed to later calls."""

    data: dict[str, Any] = field(default_factory=dict)
    execution: bool = False


@dataclass
class Reply:
    """The HTTP answer to a synchronous webhook request (emitted like a Snapshot).

    The runtime sends it to the webhook request that started the execution, when that request
    waits (RESPONSE_MODE_SYNC); otherwise it is dropped. The first reply of an execution wins.
    `body` may be bytes, text, or any JSON value (sent as JSON)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    content_type: str = ""

    def encoded(self) -> tuple[bytes, str]:
        """The body's bytes and content type."""
        if isinstance(self.body, bytes):
            return self.body, self.content_type or "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), self.content_type or "text/plain; charset=utf-8"
        return (json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode(),
                self.content_type or "application/json")
