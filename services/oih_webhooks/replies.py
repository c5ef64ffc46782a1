"""Waiting for the replies of synchronous webhook requests.

Each webhooks process owns one exclusive, auto-delete queue. A SYNC request binds it (once per
flow) to the flow's exchange with the routing key `reply.<instance>` — a step's broker user may
write only its flow's exchange, so that is where the `reply` component publishes — and asks
StartExecution to set that key as the first message's `reply_to`, with the execution id as
`correlation_id`. The worker copies both onto every message of the run; a `Reply` emitted by a
step is published with them and lands here, where it completes the waiting request's future.

pika connections are not thread-safe: one thread owns the connection; request threads hand it
bindings through a queue and wait on futures.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from oih_dataplane import topology
from oih_runtime.background import Reconnecting
from oih_runtime.bus.topology import connection_parameters

log = logging.getLogger(__name__)

REPLY_STATUS, REPLY_HEADERS = "oih-reply-status", "oih-reply-headers"


@dataclass(frozen=True)
class HttpReply:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ReplyWaiter:
    def __init__(self, url: str, instance: str | None = None) -> None:
        self.url = url
        self.instance = instance or uuid.uuid4().hex
        self.routing_key = f"reply.{self.instance}"
        self.queue = f"oih.webhooks.replies.{self.instance}"
        #: correlation id -> (the flow whose exchange the reply must come through, future)
        self._waiting: dict[str, tuple[str, Future[HttpReply]]] = {}
        self._binds: queue.Queue[tuple[str, Future[None]]] = queue.Queue()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        # The reply queue's connection: served until it drops, then opened again a second
        # later (the queue is exclusive, so it goes with the connection and comes back with it).
        self._loop = Reconnecting("oih-webhook-replies", self._serve, initial=1.0, maximum=1.0,
                                  stop_timeout=5.0)

    def start(self) -> None:
        with self._lock:  # bind() starts it from many request threads at once
            self._loop.start()

    def stop(self) -> None:
        self._loop.stop()

    def bind(self, flow_id: str, timeout: float = 10.0) -> None:
        """Make replies of `flow_id`'s steps reach this process. Done for every synchronous
        request (a binding is idempotent and cheap): a restarted flow has a new exchange,
        and a binding remembered from before would silently lead nowhere."""
        self.start()
        done: Future[None] = Future()
        self._binds.put((flow_id, done))
        done.result(timeout=timeout)

    def expect(self, flow_id: str, correlation_id: str) -> tuple[Future[HttpReply], bool]:
        """The future of the reply, and whether this caller registered it (a concurrent
        repeat of the same idempotent request shares the first one's)."""
        with self._lock:
            waiting = self._waiting.get(correlation_id)
            if waiting is not None:
                return waiting[1], False
            future: Future[HttpReply] = Future()
            self._waiting[correlation_id] = (flow_id, future)
            return future, True

    def forget(self, correlation_id: str) -> None:
        with self._lock:
            self._waiting.pop(correlation_id, None)

    # --- the connection's thread -----------------------------------------------------------

    def _serve(self) -> None:
        connection = pika.BlockingConnection(connection_parameters(self.url))
        try:
            channel = connection.channel()
            channel.queue_declare(self.queue, exclusive=True, auto_delete=True)
            channel.basic_consume(self.queue, self._on_reply, auto_ack=True)
            self._ready.set()
            while not self._loop.stopping.is_set():
                self._do_binds(connection, channel)
                connection.process_data_events(time_limit=0.05)
        finally:
            if connection.is_open:
                connection.close()

    def _do_binds(self, connection: pika.BlockingConnection, channel: Any) -> None:
        while True:
            try:
                flow_id, done = self._binds.get_nowait()
            except queue.Empty:
                return
            # Its own channel: binding to a missing exchange closes the channel it runs on.
            bind_channel = connection.channel()
            try:
                bind_channel.queue_bind(self.queue, topology.exchange_name(flow_id),
                                        routing_key=self.routing_key)
                done.set_result(None)
            except pika.exceptions.ChannelClosedByBroker as error:
                done.set_exception(LookupError(f"flow {flow_id} has no exchange: {error}"))
            finally:
                if bind_channel.is_open:
                    bind_channel.close()

    def _on_reply(self, _channel: Any, method: Any, properties: pika.BasicProperties,
                  body: bytes) -> None:
        correlation_id = str(properties.correlation_id or "")
        with self._lock:
            waiting = self._waiting.get(correlation_id)
            # The broker names the exchange the reply came through, which no publisher can
            # forge: a step of another flow cannot answer this flow's request.
            if waiting is None or method.exchange != topology.exchange_name(waiting[0]):
                return
            del self._waiting[correlation_id]
        future = waiting[1]
        if future.done():
            return
        headers = properties.headers or {}
        try:
            status = int(headers.get(REPLY_STATUS, 200))
        except (TypeError, ValueError):
            status = 502
        extra = headers.get(REPLY_HEADERS) or {}
        future.set_result(HttpReply(
            status=status if 200 <= status <= 599 else 502,
            content_type=str(properties.content_type or "application/octet-stream"),
            body=body,
            headers={_text(k): _text(v) for k, v in extra.items()} if isinstance(extra, dict)
            else {}))
