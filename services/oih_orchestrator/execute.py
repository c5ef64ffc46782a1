"""Starting an execution: the first message of a run, published to the flow's entry step.

Every trigger comes through here: StartExecution (called by the Flow Repository's `:execute`,
the scheduler and webhooks with their service tokens) and the legacy `oih.flow.execute` event.

The design, and why:
- A trigger answered with success must mean the first message is durably in RabbitMQ. So the
  request thread waits for the broker's publisher confirm before it answers; a flow that is not
  ACTIVE here (or whose queues are gone, the publish is `mandatory`) answers
  FAILED_PRECONDITION instead of an execution id that would never exist.
- Intake must scale with concurrent callers. Each request hands its message to one shared
  `PipelinedPublisher`: one I/O thread publishes each message as soon as it is queued and
  keeps a window of outstanding confirms, so N concurrent triggers share the broker's
  round-trips instead of N serialised ones.
- The execution record (`ExecutionStartRow`, the executions view's source and version) is
  written asynchronously by `StartRecorder`, in batched transactions right after the confirm:
  a database transaction per request held open across the confirm would serialise every
  trigger on the database's write lock (SQLite has one). Until its batch commits, a started
  execution is kept in memory, so a retried request with the same `execution_id` finds it.
  The cost: if the orchestrator dies between the confirm and the commit (a few milliseconds),
  the run still happens and the workers' reports still create it in the executions view, but
  without its source, and a retry with the same id would publish once more (with the same
  message id, derived from the execution id, so the duplicate is recognisable downstream).

- Per trigger, no query when none is needed: the deployment comes from `DeploymentCache`
  (invalidated by every write of the deployments table, see deployment_cache), and earlier
  starts are looked up only for an `execution_id` the caller chose.

The message is the JSON form of `oih.component.v1.Message` with the `oih-*` headers the worker
reads (built by oih_dataplane.envelope, so both sides agree). Its `data` is parsed from the
caller's JSON text with Python's `json`, which keeps integers exact, never through a
`google.protobuf.Struct` (every number a double).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from oih_dataplane import envelope, topology
from oih_runtime import names
from oih_runtime.background import Background
from oih_runtime.bus.pipelined import PipelinedPublisher, Unroutable
from oih_runtime.clock import aware, utcnow
from oih_runtime.db import is_unavailable, transaction
from oih_runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from oih_runtime.principal import Principal
from oih_sdk import Message

from .amqp import Amqp
from .deployment_cache import Deployment, DeploymentCache
from .executions import record_start
from .models import ACTIVE, DeploymentRow, ExecutionStartRow

log = logging.getLogger(__name__)

SOURCES = ("api", "webhook", "scheduler", "replay")
#: How long a sampled queue depth is trusted for backpressure decisions.
DEPTH_TTL = 0.5


@dataclass(frozen=True)
class Started:
    flow_id: str
    execution_id: str
    source: str
    flow_version: int
    create_time: datetime
    #: False when the execution existed already (nothing was published).
    new: bool
    tenant: str = ""


@dataclass(frozen=True)
class Trigger:
    """What a trigger asks for. `data` and `metadata` are JSON objects already parsed (by
    `oih_runtime.jsontext.parse_object`, which keeps integers exact)."""

    flow_id: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    execution_id: str = ""
    source: str = "api"
    reply_to: str = ""
    max_queued_messages: int = 0


def message_id(flow_id: str, execution_id: str) -> str:
    return str(uuid.uuid5(envelope.ID_NAMESPACE, f"execution/{flow_id}/{execution_id}"))


def forget_starts(engine: Engine, before: datetime) -> int:
    """Delete the start records older than `before` (the executions' retention): a repeated
    `execution_id` (a webhook's `Idempotency-Key`) is recognised within that window."""
    with transaction(engine) as session:
        result = session.exec(delete(ExecutionStartRow).where(
            col(ExecutionStartRow.create_time) < before))
        return int(result.rowcount or 0)


def visible_deployment(session: Session, caller: Principal | None, flow_id: str
                       ) -> DeploymentRow:
    """The flow's deployment, NOT_FOUND when there is none or the caller may not see it."""
    row = session.get(DeploymentRow, flow_id)
    if row is None or (caller is not None and not caller.sees_tenant(row.tenant)):
        raise NotFound("flow", f"flows/{flow_id}")
    return row


class StartRecorder:
    """Writes started executions in batches, off the request threads (see the module doc)."""

    def __init__(self, engine: Engine, *, interval: float = 0.05, max_batch: int = 500) -> None:
        self.engine = engine
        self.interval = interval
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[Started] = []
        #: (flow, execution) -> Started, until its row is committed.
        self._unwritten: dict[tuple[str, str], Started] = {}
        self._wake = threading.Event()
        self._task = Background("oih-start-recorder", self._run, stop_timeout=10.0)

    def start(self) -> None:
        self._task.start()

    def stop(self) -> None:
        self._task.stopping.set()
        self._wake.set()
        self._task.stop()
        self.flush()  # whatever is left, in this thread

    def add(self, started: Started) -> None:
        with self._lock:
            self._queue.append(started)
            self._unwritten[(started.flow_id, started.execution_id)] = started
        if self._task.running:
            self._wake.set()
        else:
            self.flush()  # not started (tests, tools) or stopped: write at once

    def unwritten(self, flow_id: str, execution_id: str) -> Started | None:
        with self._lock:
            return self._unwritten.get((flow_id, execution_id))

    def flush(self) -> None:
        while True:
            with self._lock:
                batch = self._queue[:self.max_batch]
                self._queue = self._queue[self.max_batch:]
            if not batch:
                return
            try:
                self._write_each_once(batch)
            except BaseException:
                # The database is away (or a bug): the batch goes back to the front of the
                # queue, to be written by the next round, not forgotten.
                with self._lock:
                    self._queue = batch + self._queue
                raise
            with self._lock:
                for started in batch:
                    self._unwritten.pop((started.flow_id, started.execution_id), None)

    def _write_each_once(self, batch: list[Started]) -> None:
        try:
            self._write(batch)
        except IntegrityError:
            # A row of the batch exists (an old start, another replica): one at a time.
            for started in batch:
                try:
                    self._write([started])
                except IntegrityError:
                    log.info("execution start already recorded",
                             extra={"execution_id": started.execution_id})

    def _write(self, batch: list[Started]) -> None:
        with transaction(self.engine) as session:
            for started in batch:
                session.add(ExecutionStartRow(
                    flow_id=started.flow_id, execution_id=started.execution_id,
                    tenant=started.tenant, source=started.source,
                    flow_version=started.flow_version, create_time=started.create_time))
            session.flush()
            # Without autoflush: each record_start's query would flush the previous one's
            # row first (a flush per execution). The ids of a batch are distinct (concurrent
            # starts of one id share one publish); if not, the IntegrityError at the commit
            # sends the batch through `flush`'s one-at-a-time path.
            with session.no_autoflush:
                for started in batch:
                    record_start(session, tenant=started.tenant, flow_id=started.flow_id,
                                 execution_id=started.execution_id, source=started.source,
                                 flow_version=started.flow_version, now=started.create_time)

    def _run(self) -> None:
        stopping = self._task.stopping
        while not stopping.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self.flush()
            except Exception as error:  # the rows stay queued (flush): try again
                if is_unavailable(error):
                    log.warning("recording execution starts: the database is unavailable "
                                "(%s); retrying", type(error).__name__)
                else:
                    log.exception("recording execution starts failed; retrying")
                stopping.wait(1.0)
            stopping.wait(self.interval)  # lets a batch gather under load


class Starter:
    """Starts executions: checks, the confirmed publish, the asynchronous record."""

    def __init__(self, engine: Engine, amqp: Amqp, publisher: PipelinedPublisher,
                 recorder: StartRecorder) -> None:
        self.engine = engine
        self.amqp = amqp
        self.publisher = publisher
        self.recorder = recorder
        #: The deployments' state, read once per write of that table (see deployment_cache).
        self.deployments = DeploymentCache(engine)
        self._lock = threading.Lock()
        #: (flow, execution) -> the future of the start in progress, for concurrent retries.
        self._inflight: dict[tuple[str, str], Future[Started]] = {}
        self._depths: dict[str, tuple[float, int]] = {}

    def start(self) -> None:
        self.publisher.start()
        self.recorder.start()

    def stop(self) -> None:
        self.publisher.stop()
        self.recorder.stop()

    def start_execution(self, caller: Principal | None, trigger: Trigger) -> Started:
        """Publish the first message of a run, or find the run with that id. `caller` None
        means a trusted event (its tenant was checked by the emitter)."""
        if trigger.execution_id and not names.is_id(trigger.execution_id):
            raise InvalidArgument.field("execution_id", names.ID_RULE)
        if trigger.source not in SOURCES:
            raise InvalidArgument.field("source", f"must be one of {', '.join(SOURCES)}")
        execution_id = trigger.execution_id or str(uuid.uuid4())
        key = (trigger.flow_id, execution_id)
        row = self.deployments.get(trigger.flow_id)
        if row is None or (caller is not None and not caller.sees_tenant(row.tenant)):
            raise NotFound("flow", f"flows/{trigger.flow_id}")
        # A fresh UUID cannot have been started before: only a caller's id is looked up.
        known = self._known(key) if trigger.execution_id else None
        if known is not None:
            return known
        if row.state != ACTIVE or not row.entry_step:
            raise FailedPrecondition(f"flow flows/{trigger.flow_id} is not running here (it is "
                                     f"{row.state.lower()})", reason="FLOW_NOT_ACTIVE",
                                     subject=f"flows/{trigger.flow_id}")
        if trigger.max_queued_messages > 0:
            self._check_depth(trigger.flow_id, row.entry_step, trigger.max_queued_messages)
        with self._lock:
            running = self._inflight.get(key)
            if running is None:
                mine: Future[Started] = Future()
                self._inflight[key] = mine
        if running is not None:  # the same id is being started by a concurrent request
            first = running.result(timeout=self.publisher.confirm_timeout * 2)
            return Started(**{**first.__dict__, "new": False})
        try:
            started = self._publish(row, trigger, execution_id)
            mine.set_result(started)
            return started
        except BaseException as error:
            mine.set_exception(error)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _known(self, key: tuple[str, str]) -> Started | None:
        unwritten = self.recorder.unwritten(*key)
        if unwritten is not None:
            return Started(**{**unwritten.__dict__, "new": False})
        with Session(self.engine) as session:
            known = session.get(ExecutionStartRow, key)
        if known is None:
            return None
        return Started(key[0], key[1], known.source, known.flow_version,
                       aware(known.create_time), new=False, tenant=known.tenant)

    def _check_depth(self, flow_id: str, step_id: str, limit: int) -> None:
        now = time.monotonic()
        sampled = self._depths.get(flow_id)
        if sampled is None or now - sampled[0] > DEPTH_TTL:
            count = self.amqp.count(topology.step_queue(flow_id, step_id))
            sampled = (now, count.messages if count is not None else 0)
            self._depths[flow_id] = sampled
        if sampled[1] > limit:
            raise ResourceExhausted(
                f"flow flows/{flow_id} has {sampled[1]} messages waiting at its first step "
                f"(limit {limit}); try again later", reason="FLOW_BACKLOGGED", retry_after=1.0)

    def _publish(self, row: Deployment, trigger: Trigger, execution_id: str) -> Started:
        flow_id = trigger.flow_id
        message = Message(data=trigger.data, metadata=trigger.metadata,
                          id=message_id(flow_id, execution_id), flow_id=flow_id,
                          step_id=row.entry_step, execution_id=execution_id)
        reply_to = trigger.reply_to or None
        properties = envelope.properties_of(message, reply_to=reply_to,
                                            correlation_id=execution_id if reply_to else None)
        try:
            self.publisher.publish(topology.exchange_name(flow_id),
                                   topology.input_key(row.entry_step), envelope.encode(message),
                                   properties)
        except Unroutable as error:
            raise FailedPrecondition(f"flow flows/{flow_id} has no queues ({error})",
                                     reason="FLOW_NOT_ACTIVE",
                                     subject=f"flows/{flow_id}") from None
        started = Started(flow_id, execution_id, trigger.source, row.flow_version, utcnow(),
                          new=True, tenant=row.tenant)
        self.recorder.add(started)
        return started
