"""Consuming platform events: one durable queue per service, idempotent handlers, retries.

A handler `handler(session, event, payload)` runs inside a database transaction that also
records the event id (`ProcessedEvent`); the message is acked only after that commit, so a crash
redelivers it and the recorded id makes the second delivery a no-op. A failing handler is
retried through fixed-TTL delay queues (the consumer never sleeps) and, after the last
attempt, parked in `oih.<service>.events.dead` with the error and the attempt count. While
the database is away no attempt is counted: the consumer puts the event back and pauses.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pika
import pika.exceptions
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from oih.events.v1 import event_pb2
from oih_runtime.background import Reconnecting
from oih_runtime.clock import utcnow
from oih_runtime.db import UNAVAILABLE_WAIT_MAX, is_unavailable, transaction

from .models import ProcessedEvent
from .topology import (
    DEFAULT_EXCHANGE,
    H_ATTEMPTS,
    H_DEAD_AT,
    H_ERROR,
    H_ROUTING_KEY,
    ServiceQueues,
    connection_parameters,
    declare_service_queues,
    rabbitmq_url,
)

log = logging.getLogger(__name__)

Handler = Callable[[Session, event_pb2.Event, Any], None]


class PermanentError(Exception):
    """Raised by a handler for a failure that retrying cannot fix: dead-lettered at once."""


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` handling attempts in all; the waits between them grow by `factor`."""

    max_attempts: int = 5
    base_delay: float = 1.0
    factor: float = 5.0
    max_delay: float = 3600.0

    def delays_ms(self) -> list[int]:
        return [
            max(1, int(min(self.base_delay * self.factor**i, self.max_delay) * 1000))
            for i in range(max(self.max_attempts - 1, 0))
        ]


@dataclass(frozen=True)
class _Route:
    pattern: str
    handler: Handler
    payload_type: type[Message] | None


class Consumer:
    """Consumes `oih.<service>.events`. Register handlers with `on()`, then `start()`."""

    def __init__(
        self,
        engine: Engine,
        service: str,
        *,
        url: str | None = None,
        exchange: str = DEFAULT_EXCHANGE,
        prefetch: int = 50,
        retry: RetryPolicy | None = None,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
        keep_processed: timedelta = timedelta(days=1),
        forget_every: timedelta = timedelta(minutes=1),
    ) -> None:
        self.engine = engine
        self.service = service
        #: How long a handled event's id is remembered. A duplicate comes from a relay that
        #: republished after losing its lease, or from the broker redelivering an unacked
        #: message: minutes after the original, far within this window.
        self.keep_processed = keep_processed
        self.forget_every = forget_every
        self._last_forget = utcnow()
        self.url = url or rabbitmq_url()
        self.exchange = exchange
        self.prefetch = prefetch
        self.retry = retry or RetryPolicy()
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.queues = ServiceQueues(service)
        self.ready = threading.Event()  # set while consuming (topology declared)
        self._routes: list[_Route] = []
        self._background = Reconnecting(f"oih-consumer-{service}", self._session,
                                        initial=reconnect_initial, maximum=reconnect_max)
        self._database_wait = reconnect_initial
        self._stopping = self._background.stopping

    # --- registration -----------------------------------------------------------------------

    def on(self, event_type: str, handler: Handler,
           payload_type: type[Message] | None = None) -> None:
        """Handle `event_type` (a topic pattern: `*` one word, `#` any words).

        Without `payload_type` the payload class is found from the Any's type URL.
        """
        self._routes.append(_Route(event_type, handler, payload_type))

    def handler(self, event_type: str,
                payload_type: type[Message] | None = None) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.on(event_type, fn, payload_type)
            return fn
        return register

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._background.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish (and ack) the current message, return prefetched ones, close."""
        self._background.stop(timeout)

    def _session(self) -> None:
        """One connection: consume until stopped or disconnected."""
        connection: pika.BlockingConnection | None = None
        try:
            connection = pika.BlockingConnection(connection_parameters(self.url))
            self._background.connected()
            self._consume(connection.channel())
        finally:
            self.ready.clear()
            _close_quietly(connection)

    def _consume(self, channel: BlockingChannel) -> None:
        # Confirms make the retry/dead-letter copy safe before the original is acked (they cost
        # a round-trip each, but only on the failure path).
        channel.confirm_delivery()
        declare_service_queues(channel, self.service, [r.pattern for r in self._routes],
                               self.retry.delays_ms(), self.exchange)
        channel.basic_qos(prefetch_count=self.prefetch)
        self.ready.set()
        log.info("consumer %s: consuming %s", self.service, self.queues.main)
        # The inactivity timeout lets the loop notice stop() while the queue is idle.
        for method, properties, body in channel.consume(self.queues.main,
                                                        inactivity_timeout=0.25):
            if method is not None:
                self.process(channel, method, properties, body)
            self._forget_processed()
            if self._stopping.is_set():
                break
        channel.cancel()  # prefetched, unprocessed messages go back to the queue
        self.ready.clear()

    # --- one message ------------------------------------------------------------------------

    def process(self, channel: BlockingChannel, method: Basic.Deliver,
                properties: pika.BasicProperties, body: bytes) -> None:
        headers = dict(properties.headers or {})
        attempts = int(headers.get(H_ATTEMPTS, 0))
        try:
            event = event_pb2.Event.FromString(body)
            if not event.id or not event.type:
                raise ValueError("the envelope has no id or type")
        except (DecodeError, ValueError) as exc:
            self._dead_letter(channel, method, properties, body,
                              f"unparseable event: {exc}", attempts)
            return
        route = self._match(event.type)
        if route is None:
            log.debug("consumer %s: no handler for %s; acked", self.service, event.type)
            channel.basic_ack(method.delivery_tag)
            return
        try:
            payload = _unpack(event, route.payload_type)
            self._handle(event, route.handler, payload)
        except PermanentError as exc:
            self._dead_letter(channel, method, properties, body, _describe(exc), attempts + 1)
            return
        except Exception as exc:
            if is_unavailable(exc):
                self._wait_for_database(channel, method, exc)
                return
            attempts += 1
            if attempts >= self.retry.max_attempts:
                self._dead_letter(channel, method, properties, body, _describe(exc), attempts)
            else:
                self._schedule_retry(channel, method, properties, body, _describe(exc), attempts)
            return
        channel.basic_ack(method.delivery_tag)
        self._database_wait = self.reconnect_initial

    def _wait_for_database(self, channel: BlockingChannel, method: Basic.Deliver,
                           error: Exception) -> None:
        """The database is away (restarting, a failover): no handler of this service can
        succeed, and the event is not at fault, so it costs no attempt — an outage longer than
        the retry policy must not dead-letter every event. It goes back to the queue (in its
        place) and the consumer pauses, doubling the pause while the outage lasts."""
        channel.basic_nack(method.delivery_tag, requeue=True)
        wait = self._database_wait
        self._database_wait = min(wait * 2, self.reconnect_max, UNAVAILABLE_WAIT_MAX)
        log.warning("consumer %s: the database is unavailable (%s); pausing %.1fs",
                    self.service, type(error).__name__, wait)
        deadline = time.monotonic() + wait
        while not self._stopping.is_set() and time.monotonic() < deadline:
            channel.connection.sleep(min(0.25, max(deadline - time.monotonic(), 0)))

    def _handle(self, event: event_pb2.Event, handler: Handler, payload: Any) -> None:
        try:
            with transaction(self.engine) as session:
                if session.get(ProcessedEvent, (self.service, event.id)) is not None:
                    log.debug("consumer %s: event %s already handled", self.service, event.id)
                    return
                handler(session, event, payload)
                # Same transaction as the handler's work: both commit or neither does.
                session.add(ProcessedEvent(consumer=self.service, event_id=event.id,
                                           event_type=event.type))
        except IntegrityError:
            # A replica handled the same event concurrently and committed first; our work was
            # rolled back with the duplicate id. Anything else is a real error.
            with Session(self.engine) as session:
                if session.get(ProcessedEvent, (self.service, event.id)) is not None:
                    return
            raise

    def _forget_processed(self) -> None:
        """Delete this consumer's event ids older than `keep_processed`, at most once per
        `forget_every`: the table holds a day of work, not the service's whole history."""
        now = utcnow()
        if now - self._last_forget < self.forget_every:
            return
        self._last_forget = now
        try:
            with transaction(self.engine) as session:
                session.execute(
                    delete(ProcessedEvent)
                    .where(col(ProcessedEvent.consumer) == self.service,
                           col(ProcessedEvent.processed_at) < now - self.keep_processed)
                    .execution_options(synchronize_session=False))
        except Exception as error:
            if not is_unavailable(error):
                raise
            # Housekeeping: the next round does it; consuming goes on meanwhile.
            log.warning("consumer %s: the database is unavailable (%s); forgetting old "
                        "event ids later", self.service, type(error).__name__)

    def _match(self, event_type: str) -> _Route | None:
        for route in self._routes:
            if route.pattern == event_type:
                return route
        for route in self._routes:
            if topic_matches(route.pattern, event_type):
                return route
        return None

    # --- failure paths ----------------------------------------------------------------------

    def _schedule_retry(self, channel: BlockingChannel, method: Basic.Deliver,
                        properties: pika.BasicProperties, body: bytes, error: str,
                        attempts: int) -> None:
        delay_ms = self.retry.delays_ms()[attempts - 1]
        headers = _failure_headers(properties, method, error, attempts)
        properties.headers = headers
        properties.delivery_mode = pika.DeliveryMode.Persistent.value
        # The retry queue's TTL dead-letters the copy back to our main queue.
        channel.basic_publish("", self.queues.retry(delay_ms), body, properties, mandatory=True)
        channel.basic_ack(method.delivery_tag)
        log.warning("consumer %s: %s %s failed (attempt %d of %d), retrying in %d ms: %s",
                    self.service, headers[H_ROUTING_KEY], properties.message_id, attempts,
                    self.retry.max_attempts, delay_ms, error.splitlines()[0] if error else "")

    def _dead_letter(self, channel: BlockingChannel, method: Basic.Deliver,
                     properties: pika.BasicProperties, body: bytes, error: str,
                     attempts: int) -> None:
        headers = _failure_headers(properties, method, error, attempts)
        headers[H_DEAD_AT] = int(time.time() * 1000)
        properties.headers = headers
        properties.delivery_mode = pika.DeliveryMode.Persistent.value
        # Every parked message gets an id, so `replay --id` can address even unparseable ones.
        properties.message_id = properties.message_id or str(uuid.uuid4())
        channel.basic_publish("", self.queues.dead, body, properties, mandatory=True)
        channel.basic_ack(method.delivery_tag)
        log.error("consumer %s: message %s (%s) parked in %s after %d attempt(s): %s",
                  self.service, properties.message_id, headers[H_ROUTING_KEY], self.queues.dead,
                  attempts, error.splitlines()[0] if error else "")


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: `*` is exactly one word, `#` zero or more words."""
    return _match_words(pattern.split("."), key.split("."))


def _match_words(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match_words(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head in ("*", words[0])) and _match_words(rest, words[1:])


def _unpack(event: event_pb2.Event, payload_type: type[Message] | None) -> Any:
    if not event.HasField("data"):
        return None
    type_name = event.data.TypeName()
    if payload_type is None:
        try:
            descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
        except KeyError as exc:
            raise PermanentError(f"unknown payload type {type_name!r}") from exc
        payload_type = message_factory.GetMessageClass(descriptor)
    payload = payload_type()
    try:
        ok = event.data.Unpack(payload)
    except DecodeError as exc:
        raise PermanentError(f"unparseable payload {type_name!r}: {exc}") from exc
    if not ok:
        raise PermanentError(
            f"payload is {type_name!r}, the handler expects {payload.DESCRIPTOR.full_name!r}")
    return payload


def _failure_headers(properties: pika.BasicProperties, method: Basic.Deliver, error: str,
                     attempts: int) -> dict[str, Any]:
    headers = dict(properties.headers or {})
    # After a retry the delivery's routing key is the queue name; keep the original one.
    headers.setdefault(H_ROUTING_KEY, method.routing_key)
    headers[H_ATTEMPTS] = attempts
    headers[H_ERROR] = error[:4000]
    return headers


def _describe(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text or type(exc).__name__


def _close_quietly(connection: pika.BlockingConnection | None) -> None:
    if connection is not None and connection.is_open:
        try:
            connection.close()
        except Exception:  # the connection may already be half gone after a broker restart
            log.debug("error while closing a consumer connection", exc_info=True)
