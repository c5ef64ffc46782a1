"""ReportsConsumer: a thread consuming the `reports` queue of every flow it is told to follow.

- One connection; one channel per followed flow, because a channel error (the queue does not
  exist yet, or was deleted when the flow stopped) closes only that channel. Such a flow is
  tried again every `retry_seconds` while it is followed.
- The queues are declared passively: the orchestrator owns the topology, and declaring here
  would re-create a queue that a stopping flow just deleted.
- A batch is acked after the transaction that merged it committed (at-least-once); its id makes
  a redelivery a no-op. A body that is not a StepReportBatch is logged and dropped (reports
  are a view, not a ledger). A database outage nacks the batch back to the queue and backs off.
- `follow`/`unfollow` may be called from any thread: they only change a dict, and the
  consumer thread (which alone touches pika, which is not thread-safe) reconciles it.
- A lost connection is re-opened with back-off, and every followed flow re-subscribed.
- `drain` (a stopping flow, after its workers exited): unfollow, then merge what is left in
  the queue from the calling thread, so the last reports are counted before the queue goes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import pika
import pika.exceptions
from google.protobuf import json_format
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from oih.component.v1 import message_pb2
from oih_dataplane import topology
from oih_dataplane.spec import StepSpec
from oih_runtime.background import Reconnecting
from oih_runtime.bus.topology import connection_parameters, rabbitmq_url
from oih_runtime.db import is_unavailable, transaction

from .ingest import ingest
from .models import ReportBatchRow
from .state import FlowShape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Followed:
    tenant: str
    shape: FlowShape | None


@dataclass
class _Subscription:
    channel: Any
    tag: str


@dataclass(frozen=True)
class _Delivery:
    flow_id: str
    followed: _Followed
    channel: Any
    delivery_tag: int
    body: bytes

    def settle(self, *, ack: bool) -> None:
        if not self.channel.is_open:
            return  # its channel closed: the broker requeued the delivery already
        if ack:
            self.channel.basic_ack(self.delivery_tag)
        else:
            self.channel.basic_nack(self.delivery_tag, requeue=True)


def _parse(body: bytes, flow_id: str) -> message_pb2.StepReportBatch | None:
    batch = message_pb2.StepReportBatch()
    try:
        json_format.Parse(body, batch, ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        log.warning("dropped a malformed report batch of flow %s: %s", flow_id, exc)
        return None
    return batch


class ReportsConsumer:
    def __init__(self, engine: Engine, url: str | None = None, *, prefetch: int = 100,
                 poll_seconds: float = 0.2, retry_seconds: float = 2.0,
                 reconnect_initial: float = 0.5, reconnect_max: float = 30.0,
                 gather_seconds: float = 0.05, gather_max: int = 200) -> None:
        self.engine = engine
        self.url = url or rabbitmq_url()
        self.prefetch = prefetch
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self._lock = threading.Lock()
        self._followed: dict[str, _Followed] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._next_try: dict[str, float] = {}
        self.gather_seconds = gather_seconds
        self.gather_max = gather_max
        #: Deliveries of the current round (consumer thread only).
        self._pending: list[_Delivery] = []
        self._background = Reconnecting("oih-orchestrator-reports", self._session,
                                        initial=reconnect_initial, maximum=reconnect_max)
        self._stopping = self._background.stopping

    # --- what to follow (any thread) --------------------------------------------------------

    def follow(self, flow_id: str, tenant: str, specs: Sequence[StepSpec] | None = None) -> None:
        """Count the reports of `flow_id` for `tenant`. `specs` (the running version's step
        specs) give the graph the state rule needs; without them executions stay RUNNING until
        `retention.settle` closes them."""
        shape = FlowShape.from_specs(specs) if specs else None
        with self._lock:
            self._followed[flow_id] = _Followed(tenant, shape)
            self._next_try.pop(flow_id, None)

    def unfollow(self, flow_id: str) -> None:
        with self._lock:
            self._followed.pop(flow_id, None)

    def drain(self, flow_id: str, *, tenant: str = "", specs: Sequence[StepSpec] | None = None,
              timeout: float = 15.0) -> int:
        """Stop following `flow_id` and merge every report batch left in its queue; returns
        how many were merged. For a stop: call it after the flow's workers exited (their last
        reports are in the queue) and before the queue is deleted.

        The consumer thread first lets go of the queue (its unacked deliveries go back to it),
        then this thread takes the batches one by one with its own connection (pika is not
        thread-safe). A flow that was not followed uses `tenant` and `specs`; without a
        tenant nothing can be counted and nothing is taken."""
        with self._lock:
            followed = self._followed.pop(flow_id, None)
            self._next_try.pop(flow_id, None)
        if followed is None:
            if not tenant:
                return 0
            followed = _Followed(tenant, FlowShape.from_specs(specs) if specs else None)
        deadline = time.monotonic() + timeout
        while self.following(flow_id) and time.monotonic() < deadline:
            time.sleep(0.02)  # the consumer thread drops the subscription on its next round
        queue = topology.reports_queue(flow_id)
        merged = 0
        connection = pika.BlockingConnection(connection_parameters(self.url))
        try:
            channel = connection.channel()
            while True:  # until no one consumes it (the channel close requeued what it held)
                try:
                    consumers = channel.queue_declare(queue, passive=True).method.consumer_count
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code == 404:
                        return 0  # no topology: nothing to merge
                    raise
                if consumers == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            while True:
                method, _properties, body = channel.basic_get(queue)
                if method is None:
                    break
                if self._merge(body, followed, flow_id):
                    merged += 1
                channel.basic_ack(method.delivery_tag)
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                connection.close()
        if merged:
            log.info("merged the last %d report batches of flow %s", merged, flow_id)
        return merged

    def following(self, flow_id: str) -> bool:
        """Whether the flow's reports queue is being consumed right now."""
        with self._lock:
            return flow_id in self._subscriptions

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._background.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in hand; unacked prefetched batches go back to their queues."""
        self._background.stop(timeout)

    def _session(self) -> None:
        """One connection: follow the wanted flows' queues until stopped or disconnected."""
        connection: pika.BlockingConnection | None = None
        try:
            connection = pika.BlockingConnection(connection_parameters(self.url))
            self._background.connected()
            while not self._stopping.is_set():
                self._reconcile(connection)
                connection.process_data_events(time_limit=self.poll_seconds)
                self._gather(connection)
                self._merge_pending()
        finally:
            self._pending = []  # unacked: the closing connection returns them to the queues
            with self._lock:
                self._subscriptions.clear()
                self._next_try.clear()
            if connection is not None and connection.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                    connection.close()

    # --- subscriptions (consumer thread only) -----------------------------------------------

    def _reconcile(self, connection: pika.BlockingConnection) -> None:
        with self._lock:
            wanted = set(self._followed)
            current = dict(self._subscriptions)
        for flow_id, sub in current.items():
            gone = not sub.channel.is_open or sub.tag not in sub.channel.consumer_tags
            if flow_id not in wanted or gone:
                self._drop(flow_id, sub)
        now = time.monotonic()
        for flow_id in wanted - set(self._subscriptions):
            if self._next_try.get(flow_id, 0.0) <= now:
                self._subscribe(connection, flow_id)

    def _subscribe(self, connection: pika.BlockingConnection, flow_id: str) -> None:
        channel = connection.channel()
        queue = topology.reports_queue(flow_id)
        try:
            channel.queue_declare(queue, passive=True)
            channel.basic_qos(prefetch_count=self.prefetch)
            tag = channel.basic_consume(queue, partial(self._on_message, flow_id))
        except pika.exceptions.ChannelClosedByBroker as exc:
            # 404: the flow's topology is not (or no longer) there.
            log.debug("reports queue of flow %s unavailable (%s)", flow_id, exc.reply_text)
            self._next_try[flow_id] = time.monotonic() + self.retry_seconds
            return
        with self._lock:
            self._subscriptions[flow_id] = _Subscription(channel, tag)
        log.info("consuming the reports of flow %s", flow_id)

    def _drop(self, flow_id: str, sub: _Subscription) -> None:
        with self._lock:
            self._subscriptions.pop(flow_id, None)
        self._next_try[flow_id] = time.monotonic() + self.retry_seconds
        if sub.channel.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                sub.channel.close()  # unacked deliveries go back to the queue

    # --- one batch --------------------------------------------------------------------------

    def _on_message(self, flow_id: str, channel: Any, method: Any, _properties: Any,
                    body: bytes) -> None:
        with self._lock:
            followed = self._followed.get(flow_id)
        if followed is None:  # unfollowed meanwhile: leave it for whoever follows it next
            channel.basic_nack(method.delivery_tag, requeue=True)
            return
        # Merged by `_merge_pending` once this round of deliveries is dispatched.
        self._pending.append(_Delivery(flow_id, followed, channel, method.delivery_tag, body))

    def _gather(self, connection: pika.BlockingConnection) -> None:
        """Once deliveries came, let more come for up to `gather_seconds` (or until
        `gather_max`): a trigger burst's batches then share one transaction. The view lags
        by that much at most."""
        deadline = time.monotonic() + self.gather_seconds
        while self._pending and len(self._pending) < self.gather_max:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            connection.process_data_events(time_limit=remaining)

    def _merge_pending(self) -> None:
        """Merge the deliveries of one `process_data_events` round in one transaction, then
        ack them. Why: under load (a trigger burst) a round holds dozens of batches, and a
        transaction each (with its commit, on SQLite its fsync and the write lock the trigger
        recorder also needs) cost more than the merging itself. If the shared transaction
        fails for anything but the database being down, each batch is merged on its own, so
        one bad batch is dropped alone as before."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        parsed: list[tuple[_Delivery, message_pb2.StepReportBatch | None]] = [
            (delivery, _parse(delivery.body, delivery.flow_id)) for delivery in pending]
        try:
            if len(pending) > 1:
                with transaction(self.engine) as session:
                    for delivery, batch in parsed:
                        if batch is not None:
                            ingest(session, batch, delivery.followed.tenant,
                                   flow_id=delivery.flow_id, shape=delivery.followed.shape)
            else:
                self._merge(pending[0].body, pending[0].followed, pending[0].flow_id)
        except Exception as error:
            if is_unavailable(error):
                log.warning("database unavailable (%s); %d report batches were returned to "
                            "their queues", type(error).__name__, len(pending))
                for delivery in pending:
                    delivery.settle(ack=False)
                self._stopping.wait(self.retry_seconds)
                return
            # A batch another replica counted first, or one that breaks the merge: one by one.
            for index, delivery in enumerate(pending):
                try:
                    self._merge(delivery.body, delivery.followed, delivery.flow_id)
                except Exception as single:
                    if not is_unavailable(single):
                        raise
                    log.warning("database unavailable (%s); report batches of flow %s were "
                                "returned to the queue", type(single).__name__,
                                delivery.flow_id)
                    for rest in pending[index:]:
                        rest.settle(ack=False)
                    self._stopping.wait(self.retry_seconds)
                    return
                delivery.settle(ack=True)
            return
        for delivery in pending:
            delivery.settle(ack=True)

    def _merge(self, body: bytes, followed: _Followed, flow_id: str) -> bool:
        """Merge one batch; False when it was dropped (malformed, or it breaks the merge).
        Raises what `is_unavailable` recognises (the database is away: the batch should go
        back)."""
        batch = _parse(body, flow_id)
        if batch is None:
            return False
        try:
            self._ingest(batch, followed, flow_id)
        except Exception as error:
            if is_unavailable(error):
                raise
            # A batch that breaks the merge would break it again on every redelivery.
            log.exception("dropped report batch %s of flow %s", batch.id, flow_id)
            return False
        return True

    def _ingest(self, batch: message_pb2.StepReportBatch, followed: _Followed,
                flow_id: str) -> None:
        for last in (False, True):
            try:
                with transaction(self.engine) as session:
                    ingest(session, batch, followed.tenant, flow_id=flow_id,
                           shape=followed.shape)
                return
            except IntegrityError:
                # Another replica counted the same batch and committed first: nothing to do.
                with Session(self.engine) as session:
                    if batch.id and session.get(ReportBatchRow, batch.id) is not None:
                        return
                if last:
                    raise
                # A concurrent writer created an execution or step row this batch creates
                # too (the start recorder catching up after a database outage, a replica
                # counting another batch of the same execution): once more, the merge now
                # finds the row instead of inserting it.
