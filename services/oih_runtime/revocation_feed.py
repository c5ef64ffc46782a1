"""Keeps a service's RevocationList current: loads what IAM has revoked, then follows the
`oih.iam.token.revoked` events.

Each process has its own exclusive, auto-deleted queue (not the service's shared event queue,
whose replicas compete for messages): every replica must hear every revocation. The queue is
bound before the list is loaded, so no revocation falls between the two; after a reconnect the
list is loaded again, which covers whatever was published while the connection was down.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable

import pika
import pika.exceptions

from oih.events.v1 import event_pb2, iam_pb2
from oih_runtime.bus.topology import DEFAULT_EXCHANGE, connection_parameters, declare_exchange
from oih_runtime.revocation import RevocationList

log = logging.getLogger(__name__)

REVOKED = "oih.iam.token.revoked"

Loader = Callable[[], Iterable[iam_pb2.TokensRevoked]]


def apply(revocations: RevocationList, revoked: iam_pb2.TokensRevoked) -> None:
    if revoked.token_id:
        revocations.revoke_token(revoked.token_id, revoked.expires)
    if revoked.subject:
        revocations.revoke_subject(revoked.subject, revoked.issued_before, revoked.expires)


class RevocationFeed:
    def __init__(self, revocations: RevocationList, load: Loader, url: str,
                 exchange: str = DEFAULT_EXCHANGE, name: str = "revocations") -> None:
        self.revocations = revocations
        self.load = load
        self.url = url
        self.exchange = exchange
        self.name = name
        #: Set once the list is loaded and the queue is followed.
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                self._follow()
                delay = 0.5
            except Exception as error:  # broker or IAM away: keep the list, try again
                log.warning("revocation feed interrupted (%s); retrying in %.1fs", error, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)

    def _follow(self) -> None:
        connection = pika.BlockingConnection(connection_parameters(self.url))
        try:
            channel = connection.channel()
            declare_exchange(channel, self.exchange)
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue, self.exchange, routing_key=REVOKED)
            for revoked in self.load():
                apply(self.revocations, revoked)
            self.revocations.forget_expired()
            # Revocations are idempotent and a lost one is reloaded on reconnect: auto-ack.
            channel.basic_consume(queue, self._on_message, auto_ack=True)
            self.ready.set()
            while not self._stopping.is_set():
                connection.process_data_events(time_limit=0.5)
        finally:
            if connection.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()

    def _on_message(self, _channel: object, _method: object, _properties: object,
                    body: bytes) -> None:
        try:
            event = event_pb2.Event.FromString(body)
            revoked = iam_pb2.TokensRevoked()
            if not event.data.Unpack(revoked):
                raise ValueError(f"unexpected payload {event.data.type_url}")
        except Exception:
            log.warning("ignoring an unreadable revocation event", exc_info=True)
            return
        apply(self.revocations, revoked)
        log.info("token revocation applied",
                 extra={"token_id": revoked.token_id, "subject": revoked.subject})
