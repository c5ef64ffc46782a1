"""A confirming publisher with pipelined confirms, driven synchronously from one thread.

pika's `BlockingChannel.confirm_delivery()` waits one round-trip per publish (~1.4 k msg/s).
Here a `SelectConnection` sends a whole batch, then runs its I/O loop until the broker has
confirmed (or rejected) every message of the batch, reaching the broker's own speed. The
caller's code stays sequential: every callback only records state and stops the loop, and
`_run_until` restarts the loop until the condition it waits for holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pika
from pika.adapters.select_connection import SelectConnection
from pika.channel import Channel
from pika.spec import Basic

from .topology import connection_parameters

log = logging.getLogger(__name__)

Message = tuple[str, bytes, pika.BasicProperties]  # (routing key, body, properties)
#: (exchange, routing key, body, properties): a message for any exchange.
Routed = tuple[str, str, bytes, pika.BasicProperties]

#: Outcomes of `publish_routed`, per message.
ACKED, NACKED, RETURNED = "acked", "nacked", "returned"


class PublisherError(ConnectionError):
    """The broker connection or channel is gone (or never came up)."""


class ConfirmPublisher:
    """Publishes to one exchange. Not thread-safe except `interrupt()`."""

    def __init__(self, url: str, exchange: str, *, timeout: float = 10.0,
                 declare_exchange: bool = True) -> None:
        self.url = url
        self.exchange = exchange
        self.timeout = timeout
        self.declare_exchange = declare_exchange
        self._connection: SelectConnection | None = None
        self._channel: Channel | None = None
        self._ready = False
        self._error: BaseException | str | None = None
        # delivery tag -> index in the current batch; tags grow by one per publish.
        self._pending: dict[int, int] = {}
        self._results: list[bool] = []
        # message ids the broker returned as unroutable (mandatory publishes)
        self._returned: set[str] = set()
        self._next_tag = 0
        self._lowest_tag = 1
        self._lock = threading.Lock()
        # delivery tag -> (message id, callback) of `send_routed` messages awaiting a confirm
        self._streamed: dict[int, tuple[str, Callable[[str], None]]] = {}

    # --- lifecycle --------------------------------------------------------------------------

    def connect(self) -> None:
        self._ready, self._error, self._channel = False, None, None
        self._next_tag, self._lowest_tag = 0, 1
        self._streamed, self._returned = {}, set()
        with self._lock:
            self._connection = SelectConnection(
                connection_parameters(self.url, timeout=self.timeout),
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed,
            )
        self._run_until(lambda: self._ready or self._error is not None, self.timeout * 2)
        if not self._ready:
            error = self._error or "timed out"
            self.close()
            raise PublisherError(f"cannot connect to the broker: {error}")

    def close(self) -> None:
        """Close the connection (if open) and release the I/O loop's file descriptors."""
        connection = self._connection
        if connection is None:
            return
        try:
            if not (connection.is_closed or connection.is_closing):
                connection.close()  # also aborts a connection that is still opening
            self._run_until(lambda: connection.is_closed, 5.0)
        except Exception:  # closing is best effort; the loop's descriptors are released below
            log.debug("error while closing the publisher connection", exc_info=True)
        finally:
            with self._lock:
                self._connection = None
                self._ready = False
                connection.ioloop.close()

    @property
    def is_ready(self) -> bool:
        return self._ready

    def interrupt(self) -> None:
        """Thread-safe: make a running `idle()` return now."""
        with self._lock:
            if self._connection is not None:
                self._connection.ioloop.add_callback_threadsafe(self._connection.ioloop.stop)

    # --- publishing -------------------------------------------------------------------------

    def publish_batch(self, messages: Sequence[Message], timeout: float = 30.0) -> list[bool]:
        """Publish all messages, then wait for their confirms. Returns acked-or-not per message.

        A False entry (nack, timeout, lost connection) must be published again later. Raises
        PublisherError after waiting if the connection or channel failed meanwhile.
        """
        return self._publish([(self.exchange, key, body, properties)
                              for key, body, properties in messages], False, timeout)

    def publish_routed(self, messages: Sequence[Routed], timeout: float = 30.0) -> list[str]:
        """Publish each message to its own exchange as `mandatory`, then wait for the confirms.
        Returns ACKED, NACKED (or not confirmed in time) or RETURNED (no queue took it; the
        message needs an `message_id` for this to be told) per message. Raises PublisherError
        like `publish_batch`."""
        acked = self._publish(messages, True, timeout)
        return [RETURNED if message[3].message_id in self._returned
                else ACKED if ok else NACKED
                for message, ok in zip(messages, acked, strict=True)]

    def _publish(self, messages: Sequence[Routed], mandatory: bool,
                 timeout: float) -> list[bool]:
        self._check()
        assert self._channel is not None
        self._results = [False] * len(messages)
        self._pending = {}
        self._returned = set()
        for index, (exchange, routing_key, body, properties) in enumerate(messages):
            self._channel.basic_publish(exchange, routing_key, body, properties,
                                        mandatory=mandatory)
            self._next_tag += 1
            self._pending[self._next_tag] = index
        self._run_until(lambda: not self._pending or self._error is not None, timeout)
        results, self._pending = self._results, {}
        if self._error is not None:
            raise PublisherError(f"broker connection lost while publishing: {self._error}")
        return results

    def send_routed(self, message: Routed, done: Callable[[str], None]) -> None:
        """Publish one message `mandatory` without waiting: `done(outcome)` (ACKED, NACKED or
        RETURNED) is called from the I/O loop — during `idle` — once the broker confirmed
        it. Messages stay in flight while more are sent (a confirm window, not rounds).
        After a PublisherError the callbacks of messages in flight are never called: the
        caller fails them itself (see `PipelinedPublisher`). Needs a `message_id`."""
        self._check()
        assert self._channel is not None
        exchange, routing_key, body, properties = message
        self._channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        self._next_tag += 1
        self._streamed[self._next_tag] = (str(properties.message_id), done)

    def idle(self, seconds: float, wake: threading.Event) -> None:
        """Serve the connection (heartbeats) for up to `seconds`, or until `wake` is set."""
        self._check()
        self._run_until(lambda: wake.is_set() or self._error is not None, seconds)
        self._check()

    # --- internals --------------------------------------------------------------------------

    def _check(self) -> None:
        if not self._ready or self._error is not None:
            raise PublisherError(f"publisher not connected: {self._error or 'closed'}")

    def _run_until(self, done: Callable[[], bool], timeout: float) -> None:
        connection = self._connection
        if connection is None:
            return
        ioloop = connection.ioloop
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            handle = ioloop.call_later(remaining, ioloop.stop)
            try:
                ioloop.start()
            finally:
                ioloop.remove_timeout(handle)

    def _stop_loop(self) -> None:
        if self._connection is not None:
            self._connection.ioloop.stop()

    def _on_open(self, connection: SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, _connection: Any, error: BaseException | str) -> None:
        self._error = error
        self._stop_loop()

    def _on_closed(self, _connection: Any, reason: BaseException) -> None:
        self._fail(reason)

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        # The broker returns an unroutable mandatory message before it confirms it.
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm,
                                 callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: Any) -> None:
        if not self.declare_exchange:
            self._set_ready()
            return
        assert self._channel is not None
        self._channel.exchange_declare(self.exchange, exchange_type="topic", durable=True,
                                       callback=lambda _frame: self._set_ready())

    def _set_ready(self) -> None:
        self._ready = True
        self._stop_loop()

    def _on_channel_closed(self, _channel: Channel, reason: BaseException) -> None:
        # A closed channel (e.g. a precondition failure) makes the connection useless to us.
        self._fail(reason)
        if self._connection is not None and self._connection.is_open:
            self._connection.close()

    def _fail(self, reason: BaseException | str) -> None:
        if self._error is None:
            self._error = reason
        self._ready = False
        self._stop_loop()

    def _on_return(self, _channel: Any, _method: Any, properties: pika.BasicProperties,
                   _body: bytes) -> None:
        if properties.message_id:
            self._returned.add(str(properties.message_id))

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, Basic.Ack)
        tag = method.delivery_tag
        if method.multiple:
            # Tags are consecutive, so walk up from the lowest unconfirmed one: each tag is
            # visited once, which keeps a 2000-message batch linear.
            tags: range | tuple[int] = range(self._lowest_tag, tag + 1)
            self._lowest_tag = max(self._lowest_tag, tag + 1)
        else:
            tags = (tag,)
        batch = bool(self._pending)
        for t in tags:
            index = self._pending.pop(t, None)
            if index is not None:
                self._results[index] = acked
            streamed = self._streamed.pop(t, None)
            if streamed is not None:
                message_id, done = streamed
                returned = message_id in self._returned
                self._returned.discard(message_id)
                done(RETURNED if returned else ACKED if acked else NACKED)
        if not acked:
            log.warning("broker rejected (nack) published message(s) up to tag %d", tag)
        if batch and not self._pending:
            self._stop_loop()
