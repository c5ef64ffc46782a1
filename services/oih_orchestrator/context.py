"""What every module of the orchestrator's core shares: one `Context` (the database, the
driver, the broker, the component lookup, the background tasks and the per-flow locks), and
the deployment-row helpers (states, steps, the events owed).

Each flow has a lock, so tasks, the reconciler and RPCs never act on one flow at the same
time. Side effects (broker, processes) are not transactional; the events owed are written to
the outbox in the same transaction as the deployment's new state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session

from oih.events.v1 import orchestrator_pb2
from oih_dataplane.spec import StepSpec
from oih_runtime.bus import Outbox
from oih_runtime.clock import utcnow

from .amqp import Amqp
from .broker_users import without_credentials
from .components import ComponentLookup
from .credentials import Resolve
from .drivers import RESTARTING, RUNNING, STARTING, Driver, WorkerInfo, WorkerState
from .management import Management, vhost_of
from .models import DeploymentRow, DeploymentState
from .snapshots import SnapshotReader
from .tasks import FlowTasks

SOURCE = "oih-orchestrator"
OUTBOX = Outbox(SOURCE)

#: Worker states that count as "the step has its worker".
PRESENT: tuple[WorkerState, ...] = (STARTING, RUNNING, RESTARTING)

#: A queued task: `task(cancel, request)`, `request` numbering it among the flow's requests.
Task = Callable[[threading.Event, int], None]


class StartFailed(Exception):
    """The flow cannot run as defined (its message is the reason shown to the user)."""


class Cancelled(Exception):
    """A start gave way to a newer request for its flow (or to a shutdown)."""


class ReportsSink(Protocol):
    """Where the workers' reports go: the executions view (`executions.ReportsConsumer`).

    The orchestrator follows a flow's reports queue while the flow runs and drains it when the
    flow stops, after the workers exited and before the queue is deleted."""

    def follow(self, flow_id: str, tenant: str, specs: Sequence[StepSpec] | None = None
               ) -> None: ...

    def drain(self, flow_id: str, *, tenant: str = "", specs: Sequence[StepSpec] | None = None,
              timeout: float = 15.0) -> int: ...


class Context:
    def __init__(self, engine: Engine, driver: Driver, amqp: Amqp, management: Management,
                 components: ComponentLookup, *, worker_amqp_url: str,
                 resolve: Resolve | None = None,
                 start_timeout: float = 60.0, stop_timeout: float = 60.0,
                 task_threads: int = 8) -> None:
        self.engine = engine
        self.driver = driver
        self.amqp = amqp
        self.management = management
        self.components = components
        #: Resolves a step's credentials (None: a flow naming credentials cannot start).
        self.resolve = resolve
        self.worker_url = without_credentials(worker_amqp_url)
        self.vhost = vhost_of(worker_amqp_url)
        self.start_timeout = start_timeout
        #: How long a teardown waits for the driver's workers to be gone (a pod's grace period).
        self.stop_timeout = stop_timeout
        #: The executions view's reports consumer (None: no view is kept, e.g. without a bus).
        self.reports: ReportsSink | None = None
        #: Where the steps' last snapshots come from at deployment (None: workers start empty).
        self.snapshots: SnapshotReader | None = None
        #: Starts, stops and teardowns, off the event consumer's thread, ordered per flow.
        self.tasks = FlowTasks(task_threads)
        #: Rows last changed before this moment were not changed by this process: a STARTING
        #: or STOPPING one of them is an intent a previous orchestrator did not finish.
        self.born = utcnow()
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        self._requests: dict[str, int] = {}

    @contextmanager
    def locked(self, flow_id: str, blocking: bool = True) -> Iterator[bool]:
        with self._locks_guard:
            lock = self._locks.setdefault(flow_id, threading.RLock())
        acquired = lock.acquire(blocking=blocking)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()

    def submit(self, flow_id: str, task: Task) -> None:
        """Queue `task(cancel, request)`; `request` numbers it among the flow's requests."""
        with self._locks_guard:
            request = self._requests[flow_id] = self._requests.get(flow_id, 0) + 1
        self.tasks.submit(flow_id, lambda cancel: task(cancel, request))

    def latest(self, flow_id: str, request: int) -> bool:
        with self._locks_guard:
            return self._requests.get(flow_id) == request

    def follow(self, row: DeploymentRow) -> None:
        """Merge the flow's reports into the executions view while it runs."""
        if self.reports is not None:
            self.reports.follow(row.flow_id, row.tenant,
                                [StepSpec.from_dict(raw) for raw in row.specs])

    def missing(self, row: DeploymentRow,
                workers: list[WorkerInfo] | None = None) -> list[StepSpec]:
        """The specs of the row's steps that have no worker (of `workers`, else the driver's)."""
        present = {w.step_id for w in (self.driver.workers(row.flow_id) if workers is None
                                       else workers) if w.state in PRESENT}
        return [StepSpec.from_dict(raw) for raw in row.specs if raw["step_id"] not in present]


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run `action` once `session` committed (never when it rolls back)."""
    event.listen(session, "after_commit", lambda _session: action(), once=True)


# --- rows ---------------------------------------------------------------------------------

def flow_name(flow_id: str) -> str:
    return f"flows/{flow_id}"


def steps_of(row: DeploymentRow | None) -> list[str]:
    """The steps of the deployed specs."""
    return [raw["step_id"] for raw in row.specs] if row is not None else []


def all_steps(row: DeploymentRow | None) -> list[str]:
    """The steps of the deployed specs and of the flow last asked to start."""
    if row is None:
        return []
    nodes = (row.flow or {}).get("graph", {}).get("nodes", [])
    return sorted(set(steps_of(row)) | {node["id"] for node in nodes if node.get("id")})


def set_state(row: DeploymentRow, state: DeploymentState, reason: str = "") -> None:
    row.state, row.state_reason, row.update_time = state, reason, utcnow()


def emit(session: Session, event_type: str, flow_id: str, tenant: str,
         discarded: int = 0) -> None:
    name = flow_name(flow_id)
    OUTBOX.add(session, event_type, orchestrator_pb2.FlowStateChanged(
        flow=name, tenant=tenant, discarded_messages=discarded),
        tenant=tenant, subject=name)


def emit_started(session: Session, row: DeploymentRow) -> None:
    emit(session, "oih.flow.started", row.flow_id, row.tenant)


def emit_failed(session: Session, flow_id: str, tenant: str, reason: str) -> None:
    name = flow_name(flow_id)
    OUTBOX.add(session, "oih.flow.failed", orchestrator_pb2.FlowFailed(
        flow=name, reason=reason, tenant=tenant), tenant=tenant, subject=name)
