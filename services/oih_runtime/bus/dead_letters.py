"""Inspecting and replaying a service's dead-letter queue (`oih.<service>.events.dead`).

Listing takes every message without acking and lets the channel close, which puts them back in
their places. Replaying republishes a message to the service's own queue (not the exchange:
the other services already handled the event) with a fresh attempt count, confirmed, and only
then acks the parked copy, so a failure in between duplicates (harmless) and never loses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from oih.events.v1 import event_pb2

from .topology import (
    H_ATTEMPTS,
    H_DEAD_AT,
    H_ERROR,
    H_REPLAYS,
    H_ROUTING_KEY,
    ServiceQueues,
    connection_parameters,
    rabbitmq_url,
)


@dataclass(frozen=True)
class DeadLetter:
    id: str  # the AMQP message id: the event id, or an id given when an unparseable body parked
    event_type: str
    error: str
    attempts: int
    dead_at: datetime | None
    source: str
    tenant: str
    subject: str
    replays: int
    body: bytes

    def event(self) -> event_pb2.Event | None:
        """The parsed envelope, or None when the body is not an Event."""
        try:
            return event_pb2.Event.FromString(self.body)
        except Exception:
            return None


class NoDeadLetterQueue(LookupError):
    """The service's dead-letter queue does not exist (its consumer never ran here)."""


@contextlib.contextmanager
def _dead_queue(service: str, url: str | None) -> Iterator[tuple[BlockingChannel, str, int]]:
    connection = pika.BlockingConnection(connection_parameters(url or rabbitmq_url()))
    try:
        channel = connection.channel()
        name = ServiceQueues(service).dead
        try:
            count = channel.queue_declare(name, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker as exc:
            raise NoDeadLetterQueue(
                f"no queue {name!r}: has the {service!r} consumer run on this broker?") from exc
        yield channel, name, count
    finally:
        if connection.is_open:
            # Closing returns every message we took and did not ack to the queue.
            connection.close()


def list_dead_letters(service: str, *, url: str | None = None,
                      limit: int | None = None) -> list[DeadLetter]:
    """The parked messages of `service`, oldest first; the queue is left unchanged."""
    letters: list[DeadLetter] = []
    with _dead_queue(service, url) as (channel, name, count):
        # At most the count seen at the start: messages parked meanwhile are not needed.
        for _ in range(min(count, limit) if limit is not None else count):
            method, properties, body = channel.basic_get(name, auto_ack=False)
            if method is None:
                break
            letters.append(_to_dead_letter(properties, body))
    return letters


def replay_dead_letters(service: str, ids: Iterable[str] | None = None, *,
                        url: str | None = None) -> int:
    """Send parked messages (all, or those with the given ids) back to the service's queue.

    Returns how many were replayed. Messages that fail again are parked again.
    """
    wanted = set(ids) if ids is not None else None
    queues = ServiceQueues(service)
    replayed = 0
    with _dead_queue(service, url) as (channel, name, count):
        channel.confirm_delivery()
        for _ in range(count):
            method, properties, body = channel.basic_get(name, auto_ack=False)
            if method is None:
                break
            if wanted is not None and properties.message_id not in wanted:
                continue  # left unacked: it returns to the queue when we close
            headers = dict(properties.headers or {})
            for key in (H_ATTEMPTS, H_ERROR, H_DEAD_AT, "x-death", "x-first-death-exchange",
                        "x-first-death-queue", "x-first-death-reason"):
                headers.pop(key, None)
            headers[H_REPLAYS] = int(headers.get(H_REPLAYS, 0)) + 1
            properties.headers = headers
            channel.basic_publish("", queues.main, body, properties, mandatory=True)
            channel.basic_ack(method.delivery_tag)
            replayed += 1
    return replayed


def _to_dead_letter(properties: pika.BasicProperties, body: bytes) -> DeadLetter:
    headers = properties.headers or {}
    dead_at_ms = headers.get(H_DEAD_AT)
    letter = DeadLetter(
        id=properties.message_id or "",
        event_type=properties.type or str(headers.get(H_ROUTING_KEY, "")),
        error=_text(headers.get(H_ERROR, "")),
        attempts=int(headers.get(H_ATTEMPTS, 0)),
        dead_at=datetime.fromtimestamp(dead_at_ms / 1000, UTC) if dead_at_ms else None,
        source=properties.app_id or "",
        tenant=_text(headers.get("tenant", "")),
        subject=_text(headers.get("subject", "")),
        replays=int(headers.get(H_REPLAYS, 0)),
        body=body,
    )
    return letter


def _text(value: object) -> str:
    # pika decodes AMQP long strings as bytes.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
