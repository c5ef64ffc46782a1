"""Helpers for the event bus tests (imported by package path so that each is defined once)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pika
from sqlmodel import Field, SQLModel

from oih.events.v1 import event_pb2
from oih_runtime.bus.topology import ServiceQueues, properties_for

RETRY_DELAYS_MS = [50, 100]  # RetryPolicy(max_attempts=3, base_delay=0.05, factor=2)


class Widget(SQLModel, table=True):
    """A stand-in for a service's domain table."""

    __tablename__ = "test_bus_widget"

    id: int | None = Field(default=None, primary_key=True)
    name: str


def wait_for(predicate: Callable[[], object], timeout: float = 15.0,
             interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


# --- broker ---------------------------------------------------------------------------------

@dataclass
class Amqp:
    """A test's own exchange and service name on a broker, with helpers; removed afterwards."""

    url: str
    connection: pika.BlockingConnection
    channel: pika.adapters.blocking_connection.BlockingChannel
    exchange: str
    service: str
    queues: list[str] = field(default_factory=list)

    @property
    def service_queues(self) -> ServiceQueues:
        return ServiceQueues(self.service)

    def declare_exchange(self) -> None:
        self.channel.exchange_declare(self.exchange, "topic", durable=True)

    def bind_queue(self, routing_key: str = "#", durable: bool = False) -> str:
        """A queue of the test's own bound to the exchange (durable survives a restart)."""
        self.declare_exchange()
        name = f"test.{self.service}.{len(self.queues)}"
        self.channel.queue_declare(name, durable=durable)
        self.channel.queue_bind(name, self.exchange, routing_key)
        self.queues.append(name)
        return name

    def get_all(self, queue: str, count: int, timeout: float = 20.0
                ) -> list[tuple[pika.BasicProperties, bytes]]:
        messages: list[tuple[pika.BasicProperties, bytes]] = []
        deadline = time.monotonic() + timeout
        for method, properties, body in self.channel.consume(queue, auto_ack=True,
                                                             inactivity_timeout=0.1):
            if method is not None:
                messages.append((properties, body))
            if len(messages) >= count or time.monotonic() > deadline:
                break
        self.channel.cancel()
        return messages

    def depth(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def publish_event(self, event: event_pb2.Event) -> None:
        self.declare_exchange()
        self.channel.basic_publish(self.exchange, event.type, event.SerializeToString(),
                                   properties_for(event.id, event.type, event.source,
                                                  event.tenant, event.subject,
                                                  event.request_id, event.time.seconds))

    def publish_raw(self, routing_key: str, body: bytes, **props: object) -> None:
        self.declare_exchange()
        self.channel.basic_publish(self.exchange, routing_key, body,
                                   pika.BasicProperties(**props))  # type: ignore[arg-type]

    def cleanup(self, retry_delays_ms: list[int]) -> None:
        names = [*self.queues, self.service_queues.main, self.service_queues.dead,
                 *(self.service_queues.retry(d) for d in retry_delays_ms)]
        for name in names:
            self.channel.queue_delete(name)
        self.channel.exchange_delete(self.exchange)


def open_amqp(url: str) -> Amqp:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    suffix = uuid.uuid4().hex[:10]
    return Amqp(url=url, connection=connection, channel=connection.channel(),
                exchange=f"test.oih.events.{suffix}", service=f"t{suffix}")
