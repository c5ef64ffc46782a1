"""Starting, stopping and reconciling flows: the orchestrator's core, free of gRPC.

Start (`oih.flow.starting`): record the deployment (STARTING, with the broker user names, so a
crash half-way leaves a trail to clean up), look up each node's component, declare the flow's
topology, create one broker user per step with exactly `topology.step_permissions`, deploy one
worker per step through the driver, wait until every step's queue has a consumer, then ACTIVE +
`oih.flow.started`. Any failure removes everything created and answers `oih.flow.failed` with
the reason — a flow is never left half-started (OIH #486, #926, #1088).

Stop (`oih.flow.stopping`, `oih.flow.failed` from others): remove the workers (they drain
gracefully), delete the broker users and the topology, answer `oih.flow.stopped`. Stopping
cleans whatever exists, known to the table or not, so it always succeeds.

Reconcile (at start-up and periodically): every ACTIVE deployment has its workers (missing ones
are deployed again with a fresh broker password), a worker the driver gave up on fails its flow,
and nothing runs for a flow that is not STARTING or ACTIVE (stray workers and users go).

Each flow has a lock, so the event consumer, the reconciler and RPCs never act on one flow at
the same time. Side effects (broker, processes) are not transactional; the events owed are
written to the outbox in the same transaction as the deployment's new state.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih.components.v1 import components_pb2
from oih.events.v1 import orchestrator_pb2
from oih.flows.v1 import flows_pb2
from oih_runtime.bus import Outbox
from oih_runtime.db import transaction
from oih_worker import topology
from oih_worker.spec import StepSpec, flow_id_of, spec_from_flow

from . import components as component_info
from .amqp import Amqp
from .components import ComponentLookup
from .drivers import FAILED as WORKER_FAILED
from .drivers import RESTARTING, RUNNING, STARTING, Driver, WorkerInfo
from .management import USER_PREFIX, Management, new_password, user_name, vhost_of
from .models import ACTIVE, FAILED, RUNNING_STATES, STOPPED, STOPPING, DeploymentRow, utcnow
from .models import STARTING as DEPLOYING

log = logging.getLogger(__name__)

SOURCE = "oih-orchestrator"
OUTBOX = Outbox(SOURCE)
#: Worker states that count as "the step has its worker".
PRESENT = (STARTING, RUNNING, RESTARTING)


class StartFailed(Exception):
    """The flow cannot run as defined (its message is the reason shown to the user)."""


def flow_name(flow_id: str) -> str:
    return f"flows/{flow_id}"


def entry_step(flow: flows_pb2.Flow) -> str:
    """The first step: the node that is no edge's target."""
    targets = {edge.target for edge in flow.graph.edges}
    firsts = [node.id for node in flow.graph.nodes if node.id not in targets]
    if len(firsts) != 1:
        raise StartFailed(f"the flow needs exactly one first step, it has {len(firsts)}")
    return firsts[0]


def with_credentials(url: str, user: str, password: str) -> str:
    parsed = urllib.parse.urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    netloc = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}@{host}"
    if parsed.port:
        netloc += f":{parsed.port}"
    return urllib.parse.urlunparse(parsed._replace(netloc=netloc))


def without_credentials(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    netloc = (parsed.hostname or "127.0.0.1") + (f":{parsed.port}" if parsed.port else "")
    return urllib.parse.urlunparse(parsed._replace(netloc=netloc))


class Orchestrator:
    def __init__(self, engine: Engine, driver: Driver, amqp: Amqp, management: Management,
                 components: ComponentLookup, *, worker_amqp_url: str,
                 start_timeout: float = 60.0) -> None:
        self.engine = engine
        self.driver = driver
        self.amqp = amqp
        self.management = management
        self.components = components
        self.worker_url = without_credentials(worker_amqp_url)
        self.vhost = vhost_of(worker_amqp_url)
        self.start_timeout = start_timeout
        #: Told which flows run (follow/unfollow), e.g. the executions' ReportsConsumer.
        self.reports: Any = None
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

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

    # --- start -----------------------------------------------------------------------------

    def start(self, session: Session, flow: flows_pb2.Flow, started_by: str) -> None:
        flow_id = flow_id_of(flow)
        with self.locked(flow_id):
            existing = session.get(DeploymentRow, flow_id)
            version = flow.running_version or flow.version
            if (existing is not None and existing.state == ACTIVE
                    and existing.flow_version == version and not self._missing(existing)):
                # Started twice (e.g. after a transition timeout): it runs; say so again.
                self._emit_started(session, existing)
                return
            if existing is not None and existing.state != STOPPED:
                self.teardown(flow_id, self._steps(existing))
            try:
                self._deploy(flow, started_by)
            except Exception as error:  # every failure: clean up, then tell why
                reason = str(error) if isinstance(error, StartFailed) else \
                    f"could not start the flow: {type(error).__name__}: {error}"
                log.warning("flow start failed", extra={"flow_id": flow_id, "reason": reason})
                self.teardown(flow_id, [node.id for node in flow.graph.nodes])
                row = self._row(session, flow, started_by)
                self._set(row, FAILED, reason)
                session.add(row)
                OUTBOX.add(session, "oih.flow.failed", orchestrator_pb2.FlowFailed(
                    flow=flow.name, reason=reason, tenant=flow.tenant),
                    tenant=flow.tenant, subject=flow.name)
                return
            row = self._row(session, flow, started_by)
            self._set(row, ACTIVE)
            session.add(row)
            self._follow(row)
            self._emit_started(session, row)

    def _deploy(self, flow: flows_pb2.Flow, started_by: str) -> None:
        flow_id = flow_id_of(flow)
        first = entry_step(flow)
        steps = [node.id for node in flow.graph.nodes]
        for step_id in steps:
            try:
                topology.check_ids(flow_id, step_id)
            except ValueError as error:
                raise StartFailed(str(error)) from None
        found = {node.id: self._component(node) for node in flow.graph.nodes}
        specs = [self._spec(flow, node, found[node.id]) for node in flow.graph.nodes]
        # Recorded before anything is created: after a crash the row names what to clean up.
        with transaction(self.engine) as session:
            row = session.get(DeploymentRow, flow_id) or DeploymentRow(
                flow_id=flow_id, tenant=flow.tenant, state=DEPLOYING)
            row.tenant, row.started_by, row.driver = flow.tenant, started_by, self.driver.name
            row.flow_version = flow.running_version or flow.version
            row.entry_step = first
            row.specs = [asdict(spec) for spec in specs]
            row.broker_users = {s: user_name(flow_id, s) for s in steps}
            row.components = {node.id: node.component for node in flow.graph.nodes}
            self._set(row, DEPLOYING)
            session.add(row)
        self.amqp.declare_flow(flow_id, {spec.step_id: spec.retry.retry_levels for spec in specs})
        with_passwords = [self._with_new_password(spec) for spec in specs]
        self.driver.deploy(flow_id, with_passwords, found)
        self._await_consumers(flow_id, steps)

    def _component(self, node: flows_pb2.Node) -> components_pb2.Component:
        component = self.components(node.component)
        if component is None:
            raise StartFailed(f"step {node.id}: component {node.component} does not exist")
        functions = {f.name for f in [*component.triggers, *component.actions]}
        if node.function not in functions:
            raise StartFailed(f"step {node.id}: component {node.component} has no function "
                              f"{node.function!r}")
        if self.driver.name == "local" and not component_info.entry_point(component):
            raise StartFailed(f"step {node.id}: component {node.component} has no Python entry "
                              "point, which the local driver needs")
        if self.driver.name == "kubernetes" and not component_info.image(component):
            raise StartFailed(f"step {node.id}: component {node.component} has no container "
                              "image, which the kubernetes driver needs")
        return component

    def _spec(self, flow: flows_pb2.Flow, node: flows_pb2.Node,
              component: components_pb2.Component) -> StepSpec:
        return spec_from_flow(flow, node.id, self.worker_url,
                              component_info.entry_point(component))

    def _with_new_password(self, spec: StepSpec) -> StepSpec:
        """Create (or reset) the step's broker user and return the spec that logs in as it."""
        user = user_name(spec.flow_id, spec.step_id)
        password = new_password()
        self.management.put_user(user, password)
        self.management.set_permissions(self.vhost, user,
                                        topology.step_permissions(spec.flow_id, spec.step_id))
        return StepSpec.from_dict({**asdict(spec), "amqp_url": with_credentials(
            self.worker_url, user, password)})

    def _await_consumers(self, flow_id: str, steps: list[str]) -> None:
        deadline = time.monotonic() + self.start_timeout
        waiting = set(steps)
        while waiting:
            for step_id in sorted(waiting):
                count = self.amqp.count(topology.step_queue(flow_id, step_id))
                if count is not None and count.consumers > 0:
                    waiting.discard(step_id)
            for worker in self.driver.workers(flow_id):
                # A worker that dies before it consumed is broken (bad entry point, import
                # error): fail now, not after the supervisor's back-off gives up.
                if worker.step_id in waiting and worker.state in (RESTARTING, WORKER_FAILED):
                    raise StartFailed(f"step {worker.step_id}: the worker did not start "
                                      f"({worker.state_reason})")
            if waiting and time.monotonic() > deadline:
                raise StartFailed(f"steps {', '.join(sorted(waiting))}: no worker consumed "
                                  f"within {self.start_timeout:.0f}s")
            if waiting:
                time.sleep(0.1)

    # --- stop and failure ------------------------------------------------------------------

    def stop(self, session: Session, flow: flows_pb2.Flow) -> None:
        """Remove whatever runs for the flow and answer `oih.flow.stopped`."""
        flow_id = flow_id_of(flow)
        with self.locked(flow_id):
            row = session.get(DeploymentRow, flow_id)
            steps = {node.id for node in flow.graph.nodes} | set(self._steps(row))
            if row is not None:
                self._set(row, STOPPING)
            self.teardown(flow_id, sorted(steps))
            if row is not None:
                self._set(row, STOPPED)
                session.add(row)
            OUTBOX.add(session, "oih.flow.stopped", orchestrator_pb2.FlowStateChanged(
                flow=flow.name, tenant=flow.tenant), tenant=flow.tenant, subject=flow.name)

    def failed_elsewhere(self, session: Session, flow_id: str, reason: str) -> None:
        """Another service failed the flow (e.g. a start timed out): remove what we made."""
        with self.locked(flow_id):
            row = session.get(DeploymentRow, flow_id)
            self.teardown(flow_id, self._steps(row))
            if row is not None and row.state != STOPPED:
                self._set(row, FAILED, reason)
                session.add(row)

    def teardown(self, flow_id: str, steps: Iterable[str]) -> None:
        """Workers first (they drain and ack), then the users, then the queues. Each part is
        idempotent, so a teardown interrupted by a crash can simply run again."""
        steps = sorted(set(steps))
        if self.reports is not None:
            self.reports.unfollow(flow_id)
        self.driver.remove(flow_id)
        for user in self.management.users(f"{USER_PREFIX}{flow_id}."):
            self.management.delete_user(user)
        if steps:
            self.amqp.delete_flow(flow_id, steps)

    # --- reconcile -------------------------------------------------------------------------

    def reconcile(self) -> None:
        with transaction(self.engine) as session:
            rows = list(session.exec(select(DeploymentRow).where(
                col(DeploymentRow.state).in_(RUNNING_STATES))).all())
        wanted = {row.flow_id for row in rows}
        for row in rows:
            if row.state == ACTIVE:
                self._heal(row.flow_id)
        for flow_id in sorted(self.driver.flows() - wanted):
            with self.locked(flow_id, blocking=False) as mine:
                if mine and not self._wanted(flow_id):
                    # E.g. stopped while this orchestrator was down, or a stop cut short.
                    log.warning("removing a stray flow", extra={"flow_id": flow_id})
                    self.teardown(flow_id, self._known_steps(flow_id))
        # Only users of flows this orchestrator deployed (it has a row for them): another
        # orchestrator with its own database may share the broker.
        for user in self.management.users():
            flow_id = user[len(USER_PREFIX):].split(".", 1)[0]
            if flow_id not in wanted:
                with self.locked(flow_id, blocking=False) as mine:
                    if mine and self._known(flow_id) and not self._wanted(flow_id):
                        log.warning("deleting a stray broker user", extra={"user": user})
                        self.management.delete_user(user)

    def _heal(self, flow_id: str) -> None:
        with self.locked(flow_id, blocking=False) as mine:
            if not mine:
                return  # a start or stop is busy with it; next round
            with transaction(self.engine) as session:
                row = session.get(DeploymentRow, flow_id)
                if row is None or row.state != ACTIVE:
                    return
                workers = self.driver.workers(flow_id)
                broken = [w for w in workers if w.state == WORKER_FAILED]
                if broken:
                    reason = (f"step {broken[0].step_id}: the worker keeps crashing "
                              f"({broken[0].state_reason})")
                    self.teardown(flow_id, self._steps(row))
                    self._set(row, FAILED, reason)
                    session.add(row)
                    name = flow_name(flow_id)
                    OUTBOX.add(session, "oih.flow.failed", orchestrator_pb2.FlowFailed(
                        flow=name, reason=reason, tenant=row.tenant),
                        tenant=row.tenant, subject=name)
                    return
                self._follow(row)
                missing = self._missing(row, workers)
                if missing:
                    log.warning("deploying missing workers",
                                extra={"flow_id": flow_id, "steps": [s.step_id for s in missing]})
                    found = {s.step_id: self._component_of(row, s.step_id) for s in missing}
                    self.driver.deploy(flow_id, [self._with_new_password(s) for s in missing],
                                       found)

    def _follow(self, row: DeploymentRow) -> None:
        if self.reports is not None:
            self.reports.follow(row.flow_id, row.tenant,
                                [StepSpec.from_dict(raw) for raw in row.specs])

    def _component_of(self, row: DeploymentRow, step_id: str) -> components_pb2.Component:
        component = self.components(row.components.get(step_id, ""))
        return component if component is not None else components_pb2.Component()

    def _missing(self, row: DeploymentRow,
                 workers: list[WorkerInfo] | None = None) -> list[StepSpec]:
        present = {w.step_id for w in (self.driver.workers(row.flow_id) if workers is None
                                       else workers) if w.state in PRESENT}
        return [StepSpec.from_dict(raw) for raw in row.specs if raw["step_id"] not in present]

    def _known_steps(self, flow_id: str) -> list[str]:
        with Session(self.engine) as session:
            return self._steps(session.get(DeploymentRow, flow_id))

    def _known(self, flow_id: str) -> bool:
        with Session(self.engine) as session:
            return session.get(DeploymentRow, flow_id) is not None

    def _wanted(self, flow_id: str) -> bool:
        with Session(self.engine) as session:
            row = session.get(DeploymentRow, flow_id)
            return row is not None and row.state in RUNNING_STATES

    # --- rows ------------------------------------------------------------------------------

    @staticmethod
    def _steps(row: DeploymentRow | None) -> list[str]:
        return [raw["step_id"] for raw in row.specs] if row is not None else []

    @staticmethod
    def _set(row: DeploymentRow, state: str, reason: str = "") -> None:
        row.state, row.state_reason, row.update_time = state, reason, utcnow()

    def _row(self, session: Session, flow: flows_pb2.Flow, started_by: str) -> DeploymentRow:
        flow_id = flow_id_of(flow)
        row = session.get(DeploymentRow, flow_id)
        if row is None:
            row = DeploymentRow(flow_id=flow_id, tenant=flow.tenant, state=DEPLOYING,
                                started_by=started_by, driver=self.driver.name,
                                flow_version=flow.running_version or flow.version)
        else:
            session.refresh(row)  # _deploy committed its own changes in another session
        return row

    @staticmethod
    def _emit_started(session: Session, row: DeploymentRow) -> None:
        name = flow_name(row.flow_id)
        OUTBOX.add(session, "oih.flow.started", orchestrator_pb2.FlowStateChanged(
            flow=name, tenant=row.tenant), tenant=row.tenant, subject=name)
