"""Names, settings and declarations shared by the relay, the consumer and the dead-letter tools.

Per consuming service `S` (queues are durable, messages persistent):
  oih.S.events              bound to the exchange with one binding per event type (topic keys)
  oih.S.events.retry.<N>ms  one queue per retry delay; its fixed TTL dead-letters messages back
                            to oih.S.events through the default exchange (fixed TTLs avoid the
                            head-of-line blocking of per-message TTLs in one shared queue)
  oih.S.events.dead         parked messages, with the error and attempt count in headers
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass

import pika
from pika.adapters.blocking_connection import BlockingChannel

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
DEFAULT_EXCHANGE = "oih.events"
CONTENT_TYPE = "application/protobuf"

# Headers the bus adds to retried and dead-lettered copies.
H_ATTEMPTS = "x-oih-attempts"  # failed handling attempts so far
H_ERROR = "x-oih-error"  # the last error (text, truncated)
H_DEAD_AT = "x-oih-dead-at"  # epoch ms when parked
H_ROUTING_KEY = "x-oih-routing-key"  # the original routing key (the event type)
H_REPLAYS = "x-oih-replays"  # how often the message was replayed from the dead-letter queue


def rabbitmq_url() -> str:
    """The broker URL from `OIH_RABBITMQ_URL`."""
    return os.environ.get("OIH_RABBITMQ_URL", DEFAULT_URL)


def redact_url(url: str) -> str:
    """`url` without its password, for logs."""
    parsed = urllib.parse.urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@", 1)
    return url


@dataclass(frozen=True)
class ServiceQueues:
    service: str

    @property
    def main(self) -> str:
        return f"oih.{self.service}.events"

    @property
    def dead(self) -> str:
        return f"oih.{self.service}.events.dead"

    def retry(self, delay_ms: int) -> str:
        return f"oih.{self.service}.events.retry.{delay_ms}ms"


def declare_exchange(channel: BlockingChannel, exchange: str = DEFAULT_EXCHANGE) -> None:
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)


def declare_service_queues(
    channel: BlockingChannel,
    service: str,
    event_types: list[str],
    retry_delays_ms: list[int],
    exchange: str = DEFAULT_EXCHANGE,
) -> ServiceQueues:
    """Declare (idempotently) the exchange and a service's queues and bindings."""
    names = ServiceQueues(service)
    declare_exchange(channel, exchange)
    channel.queue_declare(names.main, durable=True)
    for event_type in event_types:
        channel.queue_bind(names.main, exchange, routing_key=event_type)
    channel.queue_declare(names.dead, durable=True)
    for delay in sorted(set(retry_delays_ms)):
        channel.queue_declare(names.retry(delay), durable=True, arguments={
            "x-message-ttl": delay,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": names.main,
        })
    return names


def connection_parameters(url: str, *, timeout: float = 10.0) -> pika.URLParameters:
    params = pika.URLParameters(url)
    # One attempt per call: the callers run their own back-off loops and log each failure.
    params.connection_attempts = 1
    params.socket_timeout = timeout
    params.stack_timeout = timeout * 1.5
    params.blocked_connection_timeout = 60
    return params


def properties_for(
    event_id: str, event_type: str, source: str, tenant: str, subject: str, request_id: str,
    timestamp: int,
) -> pika.BasicProperties:
    """AMQP properties mirroring the envelope, so tools can route and inspect without parsing."""
    headers = {k: v for k, v in (("tenant", tenant), ("subject", subject),
                                 ("request_id", request_id)) if v}
    return pika.BasicProperties(
        content_type=CONTENT_TYPE, delivery_mode=pika.DeliveryMode.Persistent,
        message_id=event_id, type=event_type, app_id=source or None, timestamp=timestamp,
        headers=headers or None,
    )
