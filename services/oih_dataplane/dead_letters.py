"""A step's dead letters: list, get, discard, and replay from the failed step.

The dead-letter queue `oih.flow.<flow>.<step>.dead` is storage, not a work queue (nobody
consumes it), so it is browsed with `basic_get` without ack: every message looked at stays
unacked until the channel closes, which puts it back in its place. Discard acks the one
matching message, replay publishes its input (confirmed) to `step.<step>.input` and then acks
it. The steps before the failed one are not run again.

A replayed message keeps its message id (so replaying twice gives duplicates detectable by id,
and its outputs get the same deterministic ids as before) with `oih-attempt` reset to 1.
Dead letters are identified by that id (the failed input's id); with several dead letters of
one id (it failed again after a replay) the oldest is taken.

All functions take an open `pika.BlockingConnection` and use a channel of their own. Browsing
is linear in the queue's length; `limit` bounds what a list returns, not what it scans.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pika
from google.protobuf import json_format

from oih.component.v1 import message_pb2
from oih_sdk import Message

from . import envelope, topology


@dataclass
class DeadLetter:
    message_id: str
    envelope: message_pb2.ErrorEnvelope
    #: The input message as JSON parsed without protobuf (integers exact), when readable.
    raw_input: dict[str, Any] | None = None

    @property
    def data(self) -> dict[str, Any]:
        return json_format.MessageToDict(self.envelope.input.data)


def _parse(body: bytes, properties: pika.BasicProperties) -> DeadLetter:
    result = message_pb2.ErrorEnvelope()
    try:
        json_format.Parse(body, result, ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError):
        # Not written by a worker (e.g. rejected by a broker limit): keep it as the raw input.
        result.message = "not an ErrorEnvelope"
        result.error_type = "Unknown"
        try:
            raw = json.loads(body)
            json_format.ParseDict(raw, result.input, ignore_unknown_fields=True)
        except (ValueError, json_format.ParseError):
            result.input.data.update({"raw": body[:16384].decode("utf-8", "replace")})
        result.input.id = result.input.id or str(properties.message_id or "")
    message_id = result.headers.message_id or result.input.id or str(properties.message_id or "")
    return DeadLetter(message_id, result, _raw_input(body))


def _raw_input(body: bytes) -> dict[str, Any] | None:
    try:
        raw = json.loads(body)
    except ValueError:
        return None
    value = raw.get("input") if isinstance(raw, dict) else None
    return value if isinstance(value, dict) else None


@contextmanager
def _browse(connection: pika.BlockingConnection, flow_id: str, step_id: str
            ) -> Iterator[tuple[Any, Iterator[tuple[int, DeadLetter]]]]:
    """A channel and an iterator over (delivery tag, dead letter), oldest first. Everything not
    acked on the channel goes back to the queue when the block ends."""
    channel = connection.channel()
    queue = topology.dead_queue(flow_id, step_id)
    count = channel.queue_declare(queue, passive=True).method.message_count

    def walk() -> Iterator[tuple[int, DeadLetter]]:
        for _ in range(count):
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                return
            yield method.delivery_tag, _parse(body, properties)

    try:
        yield channel, walk()
    finally:
        if channel.is_open:
            channel.close()


def list_dead_letters(connection: pika.BlockingConnection, flow_id: str, step_id: str,
                      limit: int = 100) -> list[DeadLetter]:
    found: list[DeadLetter] = []
    with _browse(connection, flow_id, step_id) as (_channel, letters):
        for _tag, letter in letters:
            found.append(letter)
            if len(found) >= limit:
                break
    return found


def count_dead_letters(connection: pika.BlockingConnection, flow_id: str, step_id: str) -> int:
    channel = connection.channel()
    try:
        return int(channel.queue_declare(topology.dead_queue(flow_id, step_id),
                                         passive=True).method.message_count)
    finally:
        channel.close()


def get_dead_letter(connection: pika.BlockingConnection, flow_id: str, step_id: str,
                    message_id: str) -> DeadLetter | None:
    with _browse(connection, flow_id, step_id) as (_channel, letters):
        for _tag, letter in letters:
            if letter.message_id == message_id:
                return letter
    return None


def discard_dead_letter(connection: pika.BlockingConnection, flow_id: str, step_id: str,
                        message_id: str) -> bool:
    """Remove one dead letter; False when there is none with that id."""
    with _browse(connection, flow_id, step_id) as (channel, letters):
        for tag, letter in letters:
            if letter.message_id == message_id:
                channel.basic_ack(tag)
                return True
    return False


def replay_dead_letter(connection: pika.BlockingConnection, flow_id: str, step_id: str,
                       message_id: str, data: dict[str, Any] | None = None) -> bool:
    """Send a dead letter's input to its step again (with `data` instead, when given), then
    remove it. False when there is none with that id. The publish is confirmed before the dead
    letter is acked, so a failure in between leaves it in the queue (at-least-once)."""
    with _browse(connection, flow_id, step_id) as (channel, letters):
        for tag, letter in letters:
            if letter.message_id != message_id:
                continue
            message = _input_message(letter, flow_id, step_id, data)
            channel.confirm_delivery()
            channel.basic_publish(topology.exchange_name(flow_id), topology.input_key(step_id),
                                  envelope.encode(message), envelope.properties_of(message),
                                  mandatory=True)
            channel.basic_ack(tag)
            return True
    return False


def _input_message(letter: DeadLetter, flow_id: str, step_id: str,
                   data: dict[str, Any] | None) -> Message:
    raw = letter.raw_input or json_format.MessageToDict(letter.envelope.input)
    headers = letter.envelope.headers
    return Message(
        data=data if data is not None else raw.get("data", {}),
        metadata=raw.get("metadata", {}), attachments=raw.get("attachments", {}),
        passthrough=raw.get("passthrough", {}),
        id=letter.message_id, flow_id=flow_id, step_id=step_id,
        execution_id=headers.execution_id, parent_message_id=headers.parent_message_id,
        attempt=1, trace=list(headers.trace))
