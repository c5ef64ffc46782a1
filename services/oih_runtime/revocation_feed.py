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
from oih_runtime.background import Reconnecting
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
        # The broker or IAM away: keep the list, and try again (any error is expected).
        self._background = Reconnecting(name, self._follow, expected=(Exception,),
                                        stop_timeout=10.0)
        self._stopping = self._background.stopping

    def start(self) -> None:
        self._background.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._background.stop(timeout)

    def _follow(self) -> None:
        connection = pika.BlockingConnection(connection_parameters(self.url))
        self._background.connected()
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
