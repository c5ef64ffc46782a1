"""The wire form of messages: JSON bodies, `oih-*` headers, deterministic ids."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import pika

from oih_sdk import Message

CONTENT_TYPE = "application/json"
H_FLOW, H_STEP, H_EXECUTION = "oih-flow-id", "oih-step-id", "oih-execution-id"
H_MESSAGE, H_PARENT, H_ATTEMPT, H_TRACE = (
    "oih-message-id", "oih-parent-message-id", "oih-attempt", "oih-trace")

# Output ids are uuid5 in this namespace, so a redelivered input yields the same output ids.
ID_NAMESPACE = uuid.UUID("6f1d3c2e-0b7a-5c55-9f0e-6f6968000001")


class MalformedMessage(ValueError):
    """The body is not the JSON form of a Message."""


def output_id(parent_id: str, target: str, index: int) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"{parent_id}/{target}/{index}"))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def decode(body: bytes, properties: pika.BasicProperties, flow_id: str,
           step_id: str) -> Message:
    """The SDK Message of a delivery. Ids missing from headers are filled in deterministically
    (from the body's hash) so that a redelivery still produces the same output ids. Anything
    unreadable, headers included, is MalformedMessage (dead-lettered, never a worker crash)."""
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise MalformedMessage(f"body is not JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("data", {}), dict):
        raise MalformedMessage("body is not a JSON object with an object `data`")
    headers = properties.headers or {}
    message_id = (_text(headers.get(H_MESSAGE)) or _text(properties.message_id)
                  or _text(raw.get("id")))
    if not message_id:
        message_id = str(uuid.uuid5(ID_NAMESPACE, hashlib.sha256(body).hexdigest()))
    trace = headers.get(H_TRACE) or []
    try:
        attempt = int(headers.get(H_ATTEMPT) or 1)
    except (TypeError, ValueError):
        raise MalformedMessage(f"header {H_ATTEMPT} is not a number") from None
    if not isinstance(trace, list):
        raise MalformedMessage(f"header {H_TRACE} is not a list")
    return Message(
        data=raw.get("data") or {},
        metadata=raw.get("metadata") or {},
        attachments=raw.get("attachments") or {},
        passthrough=raw.get("passthrough") or {},
        id=message_id,
        flow_id=flow_id,
        step_id=step_id,
        execution_id=(_text(headers.get(H_EXECUTION))
                      or str(uuid.uuid5(ID_NAMESPACE, f"execution/{message_id}"))),
        parent_message_id=_text(headers.get(H_PARENT)),
        attempt=attempt,
        trace=[_text(step) for step in trace],
    )


def headers_of(message: Message) -> dict[str, Any]:
    headers: dict[str, Any] = {
        H_FLOW: message.flow_id,
        H_STEP: message.step_id,
        H_EXECUTION: message.execution_id,
        H_MESSAGE: message.id,
        H_ATTEMPT: message.attempt,
        H_TRACE: list(message.trace),
    }
    if message.parent_message_id:
        headers[H_PARENT] = message.parent_message_id
    return headers


def properties_of(message: Message, *, expiration_ms: int | None = None,
                  reply_to: str | None = None,
                  correlation_id: str | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=CONTENT_TYPE,
        delivery_mode=2,  # persistent
        message_id=message.id,
        headers=headers_of(message),
        expiration=None if expiration_ms is None else str(max(expiration_ms, 0)),
        reply_to=reply_to,
        correlation_id=correlation_id,
    )


def encode(message: Message) -> bytes:
    return json.dumps(message.body(), separators=(",", ":")).encode()
