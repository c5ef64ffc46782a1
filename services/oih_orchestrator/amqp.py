"""The orchestrator's own AMQP connection: declaring and deleting flow topologies, reading queue
depths and publishing an execution's first message (confirmed and mandatory).

pika's BlockingConnection is not thread-safe, and the orchestrator uses it from the event
consumer, the reconciler and gRPC threads: one connection, one lock, reopened when it broke.
These calls are rare and short (a publish is one confirm round-trip), so the lock costs little.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pika
import pika.exceptions

from oih_dataplane import topology
from oih_runtime.bus.topology import connection_parameters, redact_url

log = logging.getLogger(__name__)
T = TypeVar("T")


class Unroutable(RuntimeError):
    """No queue took the message: the flow's topology is missing."""


@dataclass(frozen=True)
class QueueCount:
    messages: int  # ready messages
    consumers: int


class Amqp:
    def __init__(self, url: str, snapshots_queue: str = "") -> None:
        self.url = url
        #: The platform's snapshots queue every flow's exchange is bound to.
        self.snapshots_queue = snapshots_queue or topology.snapshots_queue()
        self._lock = threading.Lock()
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    def close(self) -> None:
        with self._lock:
            self._drop()

    # --- topology ------------------------------------------------------------------------

    def declare_flow(self, flow_id: str, steps: Mapping[str, int]) -> None:
        self._run(lambda ch: topology.declare_flow(ch, flow_id, steps, self.snapshots_queue))

    def delete_flow(self, flow_id: str, step_ids: Sequence[str]) -> None:
        self._run(lambda ch: topology.delete_flow(ch, flow_id, step_ids))

    def count(self, queue: str) -> QueueCount | None:
        """Ready messages and consumers of a queue (a passive declare); None when it is missing."""
        def passive(channel: Any) -> QueueCount | None:
            try:
                ok = channel.queue_declare(queue, passive=True).method
            except pika.exceptions.ChannelClosedByBroker as error:
                if error.reply_code == 404:
                    return None
                raise
            return QueueCount(int(ok.message_count), int(ok.consumer_count))
        return self._run(passive)

    # --- publishing ----------------------------------------------------------------------

    def publish(self, exchange: str, routing_key: str, body: bytes,
                properties: pika.BasicProperties) -> None:
        """Publish and wait for the broker's confirm; Unroutable when no queue takes it."""
        def send(channel: Any) -> None:
            try:
                channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
            except pika.exceptions.UnroutableError:
                raise Unroutable(f"no queue is bound to {routing_key!r} on {exchange}") from None
        self._run(send)

    # --- plumbing ------------------------------------------------------------------------

    def _run(self, action: Callable[[Any], T]) -> T:
        with self._lock:
            for attempt in (1, 2):
                try:
                    return action(self._open())
                except pika.exceptions.ChannelClosedByBroker:
                    # The channel died with the error (e.g. a 404); the next call needs a new one.
                    self._channel = None
                    raise
                except (pika.exceptions.AMQPConnectionError, pika.exceptions.ChannelWrongStateError,
                        pika.exceptions.StreamLostError, OSError) as error:
                    self._drop()
                    if attempt == 2:
                        raise
                    log.info("AMQP connection to %s lost (%s); reconnecting",
                             redact_url(self.url), error)
        raise AssertionError("unreachable")

    def _open(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            self._connection = pika.BlockingConnection(connection_parameters(self.url))
            self._channel = None
        if self._channel is None or not self._channel.is_open:
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except Exception:  # already half gone
                log.debug("error closing the AMQP connection", exc_info=True)
