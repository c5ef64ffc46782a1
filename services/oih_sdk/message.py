"""What a component function receives and emits."""

from __future__ import annotations

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
