"""What one input message turns into: the publishes a step owes for it (no I/O here).

The runtime publishes each part's `Outgoing` list and acks the input once all of them are
confirmed. An input's outcome comes in parts of at most `part_size` publishes: the first part
from `handle`, the others from `Outcome.rest` as the runtime asks for them, while the function
is still emitting (a generator is consumed only as far as the runtime has room). So a split
into 50,000 messages holds one part in memory, not 50,000 encoded messages.

A function that emits fewer outputs than a part holds is decided whole before anything is sent,
as before: a failure half-way through emitting publishes nothing but the retry or dead letter.
A larger fan-out that fails after parts were sent keeps those (at-least-once, like a crash
before the ack): the retry emits them again with the same deterministic ids.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jsonata
import pika
from google.protobuf import json_format

from oih.component.v1 import message_pb2
from oih_dataplane import envelope, topology
from oih_dataplane.spec import EdgeSpec, StepSpec
from oih_sdk import (
    Message,
    Reply,
    Snapshot,
    call,
    load_function,
    non_retryable,
    takes_credentials,
)
from oih_sdk.errors import error_type, is_retryable

MAX_STACK = 16 * 1024
#: Publishes in one part of an outcome (see the module comment).
PART_SIZE = 256
#: AMQP headers of a reply message (see oih.component.v1's contract).
REPLY_STATUS, REPLY_HEADERS = "oih-reply-status", "oih-reply-headers"


@non_retryable
class EdgeError(Exception):
    """An edge's condition or mapper failed on a message (deterministic, so never retried)."""


@dataclass
class Outgoing:
    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    #: False only for webhook replies: the waiting request may be gone (timed out, its
    #: service restarted), and a reply nobody takes must not stop the worker.
    mandatory: bool = True


@dataclass
class Outcome:
    input: Message | None
    outgoing: list[Outgoing] = field(default_factory=list)
    outputs: list[Message] = field(default_factory=list)  # what the function emitted
    error: BaseException | None = None
    error_envelope: message_pb2.ErrorEnvelope | None = None  # set when dead-lettered
    retried: bool = False
    #: Deliveries to successor steps (outputs x edges whose condition held) in `outgoing`.
    routed: int = 0
    #: The outcome's further parts, produced on demand; the last one carries the snapshot,
    #: or the retry or dead letter when the function failed after the parts before it.
    rest: Iterator[Outcome] = field(default_factory=lambda: iter(()))


class CompiledEdge:
    """An outgoing edge with its JSONata compiled once (compiling costs more than evaluating)."""

    def __init__(self, edge: EdgeSpec) -> None:
        self.target = edge.target
        self.condition = jsonata.Jsonata(edge.condition) if edge.condition.strip() else None
        self.mapper = jsonata.Jsonata(edge.mapper) if edge.mapper.strip() else None

    def route(self, message: Message) -> dict[str, Any] | None:
        """The data the target receives, or None when the condition does not hold."""
        context = {"data": message.data, "metadata": message.metadata,
                   "passthrough": message.passthrough}
        try:
            if self.condition is not None and not self.condition.evaluate(context):
                return None
            if self.mapper is None:
                return message.data
            mapped = self.mapper.evaluate(context)
        except Exception as exc:
            raise EdgeError(f"edge to {self.target}: {exc}") from exc
        if mapped is None:
            return {}
        return mapped if isinstance(mapped, dict) else {"value": mapped}


def emitted(result: Any) -> Iterator[Message | dict[str, Any] | Snapshot | Reply]:
    """What a function returned or yielded, one item at a time (a generator is consumed only
    as far as it is read)."""
    items: Iterable[Any]
    if result is None:
        items = ()
    elif isinstance(result, list | tuple) or inspect.isgenerator(result):
        items = result
    else:
        items = (result,)
    for item in items:
        if item is None:
            continue
        if not isinstance(item, Snapshot | Reply | Message | dict):
            raise TypeError("a function may emit dicts, Messages, Snapshots or Replies, not "
                            f"{type(item)}")
        yield item


class StepProcessor:
    def __init__(self, spec: StepSpec, fn: Any = None,
                 credentials: dict[str, Any] | None = None, part_size: int = PART_SIZE) -> None:
        self.spec = spec
        self.part_size = part_size
        self.fn = fn or load_function(spec.entry_point, spec.function)
        #: The step's resolved secret: held in memory only, handed to the function apart from
        #: its config (see oih_sdk), never put in a report, a log line or an output.
        self._credentials = credentials
        self._with_credentials = takes_credentials(self.fn)
        self.edges = [CompiledEdge(edge) for edge in spec.edges]
        self.snapshot: dict[str, Any] = dict(spec.snapshot)
        self.sequence = spec.snapshot_sequence
        self.exchange = topology.exchange_name(spec.flow_id)

    def handle(self, body: bytes, properties: pika.BasicProperties) -> Outcome:
        try:
            message = envelope.decode(body, properties, self.spec.flow_id, self.spec.step_id)
        except envelope.MalformedMessage as exc:
            return self._malformed(body, properties, exc)
        parts = self._parts(message, body, properties)
        first = next(parts)
        first.rest = parts
        return first

    def _parts(self, message: Message, body: bytes, properties: pika.BasicProperties
               ) -> Iterator[Outcome]:
        part = Outcome(message)
        snapshot: Snapshot | None = None
        reply: Reply | None = None
        try:
            index = 0
            result = call(self.fn, message, self.spec.config, self.snapshot,
                          self._credentials, with_credentials=self._with_credentials)
            for item in emitted(result):
                if isinstance(item, Snapshot):
                    snapshot = item
                    continue
                if isinstance(item, Reply):
                    reply = reply or item
                    continue
                output = self._output(message, item)
                part.outputs.append(output)
                for edge in self.edges:
                    data = edge.route(output)
                    if data is not None:
                        part.outgoing.append(
                            self._to_edge(message, output, edge.target, index, data, properties))
                        part.routed += 1
                index += 1
                if len(part.outgoing) >= self.part_size:
                    yield part
                    part = Outcome(message)
        except Exception as exc:  # a component error: retry or dead-letter the input
            # The outputs of the unfinished part were never sent: they are dropped.
            yield self._failed(message, body, properties, exc)
            return
        if reply is not None and properties.reply_to:
            part.outgoing.append(self._reply(message, reply, properties))
        if snapshot is not None:
            # Kept for the next call only once the outcome stands (an error above discards it).
            if not snapshot.execution:
                self.snapshot = dict(snapshot.data)
            part.outgoing.append(self._snapshot(message, snapshot))
        yield part

    # --- outputs -------------------------------------------------------------------------

    def _output(self, parent: Message, item: Message | dict[str, Any]) -> Message:
        if isinstance(item, dict):
            # A dict is the output's data; metadata and attachments carry over from the input.
            output = Message(data=item, metadata=parent.metadata, attachments=parent.attachments)
        else:
            output = item
        passthrough = dict(parent.passthrough)
        passthrough.update(output.passthrough)
        if self.spec.passthrough:
            passthrough[self.spec.step_id] = {"data": output.data, "metadata": output.metadata}
        output.passthrough = passthrough
        return output

    def _to_edge(self, parent: Message, output: Message, target: str, index: int,
                 data: dict[str, Any], properties: pika.BasicProperties) -> Outgoing:
        message = Message(
            data=data, metadata=output.metadata, attachments=output.attachments,
            passthrough=output.passthrough,
            id=envelope.output_id(parent.id, target, index),
            flow_id=self.spec.flow_id, step_id=target, execution_id=parent.execution_id,
            parent_message_id=parent.id, attempt=1, trace=[*parent.trace, self.spec.step_id],
        )
        # reply_to / correlation_id travel along for synchronous webhook replies.
        return Outgoing(topology.input_key(target), envelope.encode(message),
                        envelope.properties_of(message, reply_to=properties.reply_to,
                                               correlation_id=properties.correlation_id))

    def _reply(self, message: Message, reply: Reply,
               properties: pika.BasicProperties) -> Outgoing:
        """The answer to the synchronous webhook request waiting for this execution: published
        on the flow's exchange (the only one a step may write) with the request's `reply_to`
        as routing key, which the webhooks service bound its reply queue to."""
        body, content_type = reply.encoded()
        return Outgoing(str(properties.reply_to), body, pika.BasicProperties(
            content_type=content_type, delivery_mode=1,
            message_id=envelope.output_id(message.id, "reply", 0),
            correlation_id=properties.correlation_id,
            headers={envelope.H_EXECUTION: message.execution_id,
                     REPLY_STATUS: int(reply.status),
                     REPLY_HEADERS: {str(k): str(v) for k, v in reply.headers.items()}}),
            mandatory=False)

    def next_sequence(self) -> int:
        """The sequence number of the next snapshot write: above every earlier one of this
        worker and above the stored one it started from (so it also grows across restarts when
        the clock does not), and otherwise the time in microseconds, so writes of successive
        workers of the step, and an operator's reset, order by time. The Snapshots service
        applies a write only when its sequence is higher than the stored one."""
        self.sequence = max(self.sequence + 1, time.time_ns() // 1000)
        return self.sequence

    def _snapshot(self, message: Message, snapshot: Snapshot) -> Outgoing:
        # The JSON form of oih.snapshots.v1.Snapshot (int64 `sequence` as a string).
        body: dict[str, Any] = {
            "name": f"flows/{self.spec.flow_id}/steps/{self.spec.step_id}/snapshot",
            "data": snapshot.data, "sequence": str(self.next_sequence())}
        if snapshot.execution:
            body["executionId"] = message.execution_id
        properties = pika.BasicProperties(
            content_type=envelope.CONTENT_TYPE, delivery_mode=2,
            message_id=envelope.output_id(message.id, "snapshot", 0),
            headers=envelope.headers_of(message))
        return Outgoing(topology.SNAPSHOT_KEY, json.dumps(body).encode(), properties)

    # --- failures ------------------------------------------------------------------------

    def _failed(self, message: Message, body: bytes, properties: pika.BasicProperties,
                exc: BaseException) -> Outcome:
        retry = self.spec.retry
        outcome = Outcome(message, error=exc)
        if message.attempt < retry.max_attempts and is_retryable(exc, retry.non_retryable_errors):
            # Retry: the same body and id, attempt + 1, parked in the delay queue of its level.
            # RabbitMQ strips `expiration` when it dead-letters the message back to the input.
            level = retry.level(message.attempt)
            retried = Message(**{**message.__dict__, "attempt": message.attempt + 1})
            delay_ms = int(retry.delay(message.attempt) * 1000)
            outcome.outgoing.append(Outgoing(
                topology.retry_key(self.spec.step_id, level), body,
                envelope.properties_of(retried, expiration_ms=delay_ms,
                                       reply_to=properties.reply_to,
                                       correlation_id=properties.correlation_id)))
            outcome.retried = True
            return outcome
        stack = "".join(traceback.format_exception(exc))[-MAX_STACK:]
        envelope_pb = self._envelope(message, str(exc) or error_type(exc), error_type(exc), stack)
        outcome.error_envelope = envelope_pb
        outcome.outgoing.append(self._dead_letter(message, envelope_pb))
        return outcome

    def _malformed(self, body: bytes, properties: pika.BasicProperties,
                   exc: BaseException) -> Outcome:
        message = Message(
            data={"malformedBody": body[:MAX_STACK].decode("utf-8", "replace")},
            id=str(properties.message_id or envelope.output_id(
                hashlib.sha256(body).hexdigest(), "malformed", 0)),
            flow_id=self.spec.flow_id, step_id=self.spec.step_id, execution_id="")
        envelope_pb = self._envelope(message, str(exc), "MalformedMessage", "")
        outcome = Outcome(None, error=exc, error_envelope=envelope_pb)
        outcome.outgoing.append(self._dead_letter(message, envelope_pb))
        return outcome

    def _envelope(self, message: Message, text: str, kind: str,
                  stack: str) -> message_pb2.ErrorEnvelope:
        result = message_pb2.ErrorEnvelope(message=text, error_type=kind, stack=stack,
                                           attempt=message.attempt)
        try:
            json_format.ParseDict(message.body(), result.input, ignore_unknown_fields=True)
        except json_format.ParseError:  # e.g. odd attachments: keep the payload at least
            result.input.Clear()
            json_format.ParseDict({"id": message.id, "data": message.data}, result.input)
        result.headers.CopyFrom(message_pb2.MessageHeaders(
            flow_id=message.flow_id, step_id=message.step_id, execution_id=message.execution_id,
            message_id=message.id, parent_message_id=message.parent_message_id,
            attempt=message.attempt, trace=message.trace))
        result.time.FromDatetime(datetime.now(UTC))
        return result

    def _dead_letter(self, message: Message,
                     envelope_pb: message_pb2.ErrorEnvelope) -> Outgoing:
        # The input goes in as the JSON it arrived as, not through the proto's Struct (every
        # number a double): a replay must deliver the data exactly as it was.
        body = json_format.MessageToDict(envelope_pb)
        body["input"] = {**body.get("input", {}), **message.body()}
        return Outgoing(topology.dead_key(self.spec.step_id),
                        json.dumps(body, separators=(",", ":")).encode(),
                        envelope.properties_of(message))
