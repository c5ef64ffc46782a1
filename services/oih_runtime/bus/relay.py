"""The outbox relay: a background thread that publishes outbox rows with pipelined confirms.

It wakes at once when a local transaction added events (`outbox.subscribe`) and also polls,
for rows written by other processes. Several relays may run against one database: a relay
claims a batch with a lease (under SQLite's write lock; `FOR UPDATE SKIP LOCKED` on
PostgreSQL) so that each row is published by one relay, and a crashed relay's rows come back
when the lease ends. Delivery is at-least-once (a crash between the confirm and the `sent_at`
update republishes); consumers are idempotent by event id.

Cost per event does not depend on history: the batch is found through an index of the unsent
rows and handled by primary key; a sent row loses its body at once and the row itself after
`keep_sent`; the purge also returns SQLite's free pages to the file system.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.sql import ColumnElement, Select
from sqlmodel import col

from oih_runtime.background import Reconnecting
from oih_runtime.clock import utcnow
from oih_runtime.db import (
    UNAVAILABLE_WAIT_MAX,
    is_unavailable,
    reclaim_free_pages,
    transaction,
)

from . import outbox
from .models import OutboxEvent
from .publisher import ConfirmPublisher, Message, PublisherError
from .topology import DEFAULT_EXCHANGE, properties_for, rabbitmq_url, redact_url

log = logging.getLogger(__name__)


class Relay:
    def __init__(
        self,
        engine: Engine,
        *,
        url: str | None = None,
        exchange: str = DEFAULT_EXCHANGE,
        batch_size: int = 500,
        poll_interval: float = 2.0,
        lease: float = 60.0,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 30.0,
        keep_sent: timedelta = timedelta(minutes=10),
        purge_every: timedelta = timedelta(minutes=1),
        name: str = "oih-relay",
    ) -> None:
        self.engine = engine
        self.url = url or rabbitmq_url()
        self.exchange = exchange
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lease = lease
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.keep_sent = keep_sent
        self.purge_every = purge_every
        self.name = name
        self._wake = threading.Event()
        self._background = Reconnecting(name, self._session, initial=reconnect_initial,
                                        maximum=reconnect_max, expected=(PublisherError,),
                                        stop_timeout=15.0)
        self._stopping = self._background.stopping
        self._publisher: ConfirmPublisher | None = None
        self._last_purge = utcnow()
        self.connected = threading.Event()  # set while a broker connection is up (for tests)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._background.running:
            return
        outbox.subscribe(self.wake)
        self._background.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Finish the current batch, close the connection and end the thread."""
        outbox.unsubscribe(self.wake)
        self._stopping.set()
        self.wake()
        self._background.stop(timeout)

    def wake(self) -> None:
        """Publish soon (thread-safe; called after a commit that added outbox rows)."""
        self._wake.set()
        publisher = self._publisher
        if publisher is not None:
            publisher.interrupt()

    def __enter__(self) -> Relay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the loop ---------------------------------------------------------------------------

    def _session(self) -> None:
        """One connection: relay until stopped or disconnected. While RabbitMQ is away the
        outbox events wait in the database; while the database is away the session waits
        for it (`_serve`); a bug ends the session, and the next one tries again later."""
        publisher = ConfirmPublisher(self.url, self.exchange)
        try:
            publisher.connect()
            self._publisher = publisher
            self.connected.set()
            log.info("%s: connected to RabbitMQ at %s; relaying the outbox to %r",
                     self.name, redact_url(self.url), self.exchange)
            self._background.connected()
            self._serve(publisher)
        finally:
            self.connected.clear()
            self._publisher = None
            publisher.close()

    def _serve(self, publisher: ConfirmPublisher) -> None:
        wait = self.reconnect_initial  # after a failed database round, doubling
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                full = self.relay_batch(publisher) >= self.batch_size
                self._purge_sent()  # also under a steady load, when batches are always full
            except Exception as error:
                if not is_unavailable(error):
                    raise
                # The database is away (restarting, a failover): the broker connection stays
                # up and the next round tries again; the events wait in the outbox. Rows this
                # round claimed come back when their lease ends (published twice at most).
                log.warning("%s: the database is unavailable (%s); trying again in %.1fs",
                            self.name, type(error).__name__, wait)
                publisher.idle(wait, self._stopping)
                wait = min(wait * 2, self.reconnect_max, UNAVAILABLE_WAIT_MAX)
                continue
            wait = self.reconnect_initial
            if full:
                continue  # more rows are probably waiting
            publisher.idle(self.poll_interval, self._wake)

    def relay_batch(self, publisher: ConfirmPublisher) -> int:
        """Claim, publish and mark one batch. Returns the number of rows claimed."""
        token, rows = self._claim()
        if not rows:
            return 0
        messages: list[Message] = [
            (row.event_type, row.body, properties_for(
                row.event_id, row.event_type, row.source, row.tenant, row.subject,
                row.request_id, int(row.created_at.timestamp())))
            for row in rows
        ]
        seqs = [row.seq for row in rows if row.seq is not None]
        try:
            results = publisher.publish_batch(messages, timeout=self.lease / 2)
        except PublisherError:
            self._finish(token, acked=[], failed=seqs)
            raise
        acked = [seq for seq, ok in zip(seqs, results, strict=True) if ok]
        failed = [seq for seq, ok in zip(seqs, results, strict=True) if not ok]
        self._finish(token, acked=acked, failed=failed)
        if failed:
            log.warning("%s: %d event(s) not confirmed by the broker; they will be retried",
                        self.name, len(failed))
        log.debug("%s: published %d event(s)", self.name, len(acked))
        return len(rows)

    # --- database ---------------------------------------------------------------------------

    def candidates(self, now: datetime) -> Select[int | None]:
        """The next batch's rows: unsent, not leased to a live relay, oldest first.

        Served by the partial index of unsent rows (models.py) on PostgreSQL, by the `sent_at`
        index on SQLite: it never reads sent rows, so a batch costs the same with an empty
        outbox and after a million relayed events (tests/oih_runtime/bus/test_relay.py checks the
        plan). On PostgreSQL SKIP LOCKED lets concurrent relays take different rows.
        """
        return (
            select(col(OutboxEvent.seq)).where(*_claimable(now)).order_by(col(OutboxEvent.seq))
            .limit(self.batch_size).with_for_update(skip_locked=True)
        )

    def _claim(self) -> tuple[str, Sequence[OutboxEvent]]:
        token = uuid.uuid4().hex
        now = utcnow()
        # Every statement after the candidates addresses rows by primary key. On SQLite the
        # write lock is taken before the candidates are read (`lock`); on PostgreSQL the
        # UPDATE repeats the conditions, so a row another relay took in between stays with
        # that relay, and the read-back by token returns only the rows this relay claimed.
        with transaction(self.engine, lock=True) as session:
            seqs = list(session.scalars(self.candidates(now)).all())
            if not seqs:
                return token, []
            session.execute(
                update(OutboxEvent)
                .where(col(OutboxEvent.seq).in_(seqs), *_claimable(now))
                .values(claimed_by=token, claimed_until=now + timedelta(seconds=self.lease),
                        publish_attempts=col(OutboxEvent.publish_attempts) + 1)
                .execution_options(synchronize_session=False)
            )
            rows = session.scalars(
                select(OutboxEvent)
                .where(col(OutboxEvent.seq).in_(seqs), col(OutboxEvent.claimed_by) == token)
                .order_by(col(OutboxEvent.seq))
            ).all()
        return token, rows

    def _finish(self, token: str, *, acked: list[int], failed: list[int]) -> None:
        now = utcnow()
        with transaction(self.engine) as session:
            for chunk in _chunks(acked):
                session.execute(
                    update(OutboxEvent)
                    .where(col(OutboxEvent.seq).in_(chunk), col(OutboxEvent.claimed_by) == token)
                    # The body is not needed any more: only the id stays, until the purge.
                    .values(sent_at=now, claimed_until=None, body=b"")
                    .execution_options(synchronize_session=False)
                )
            for chunk in _chunks(failed):
                # Released for the next batch right away instead of waiting for the lease.
                session.execute(
                    update(OutboxEvent)
                    .where(col(OutboxEvent.seq).in_(chunk), col(OutboxEvent.claimed_by) == token)
                    .values(claimed_by=None, claimed_until=None)
                    .execution_options(synchronize_session=False)
                )

    def _purge_sent(self) -> None:
        """Forget relayed events older than `keep_sent` (their ids) and give the freed pages
        back to the file system, at most once per `purge_every`."""
        now = utcnow()
        if now - self._last_purge < self.purge_every:
            return
        self._last_purge = now
        with transaction(self.engine) as session:
            session.execute(
                delete(OutboxEvent)
                .where(col(OutboxEvent.sent_at) < now - self.keep_sent)
                .execution_options(synchronize_session=False)
            )
        reclaim_free_pages(self.engine)


def _claimable(now: datetime) -> tuple[ColumnElement[bool], ...]:
    return (
        col(OutboxEvent.sent_at).is_(None),
        or_(col(OutboxEvent.claimed_until).is_(None), col(OutboxEvent.claimed_until) < now),
    )


def _chunks(items: list[int], size: int = 500) -> list[list[int]]:
    return [items[i:i + size] for i in range(0, len(items), size)]

