"""Starting, stopping and reconciling flows: the orchestrator's core, free of gRPC.

Intent, then work. The event handlers (`start`, `stop`, `failed_elsewhere`) only record what
was asked in the deployment row, in the event's transaction (STARTING with the flow itself;
STOPPING; FAILED), and once that committed queue a background task (`tasks.FlowTasks`: one
flow's tasks in order, different flows in parallel). So the event consumer never waits for
workers, and a crash after the ack leaves a row the reconciler finishes on restart: a STARTING
row is started again from the stored flow (answering `oih.flow.started` or `oih.flow.failed`),
a STOPPING row is stopped (`oih.flow.stopped`). A newer request of the same flow cancels a start
still in progress; the newer request's task then cleans up, so a stop during a start wins.

Start (task): remove what a previous version left, look up each node's component, record the
specs and broker user names (so a crash half-way leaves a trail to clean up), declare the flow's
topology, create one broker user per step with exactly `topology.step_permissions`, deploy one
worker per step through the driver, wait until every step's queue has a consumer, then ACTIVE +
`oih.flow.started`. Any failure removes everything created and answers `oih.flow.failed` with
the reason — a flow is never left half-started (OIH #486, #926, #1088).

Stop (task): `teardown` — the workers first (SIGTERM: they finish the messages they hold and
send their last reports), then the reports left in the flow's reports queue are merged into the
executions view, then the broker users and the topology go; STOPPED, `oih.flow.stopped`, which
says how many messages still waiting in the flow's queues the stop discarded (a stop does not
drain a backlog). Stopping cleans whatever exists, known to the table or not, so it always
succeeds.

Queues hold accepted messages, so only an explicit stop (or the stop of a flow this orchestrator
no longer runs: a stray) deletes them with what they hold. A failure — a start that fails, a
worker the driver gave up on, a flow failed elsewhere — removes the workers and broker users but
keeps queues that hold messages, retries or dead letters (empty ones go); starting the flow
again consumes them, stopping it discards them.

Reconcile (at start-up and periodically): every ACTIVE deployment has its workers (missing ones
are deployed again with a fresh broker password), a worker the driver gave up on fails its flow,
unfinished STARTING/STOPPING rows are finished, and nothing runs for a flow that is not STARTING
or ACTIVE (stray workers and users go). Each flow is reconciled on its own: an error with one
(the broker or the management API away) is logged and the round goes on with the next.

Each flow has a lock, so tasks, the reconciler and RPCs never act on one flow at the same time.
Side effects (broker, processes) are not transactional; the events owed are written to the
outbox in the same transaction as the deployment's new state.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any, Protocol

from google.protobuf import json_format
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih.components.v1 import components_pb2
from oih.events.v1 import orchestrator_pb2
from oih.flows.v1 import flows_pb2
from oih_dataplane import topology
from oih_dataplane.spec import StepSpec, flow_id_of, spec_from_flow
from oih_runtime.bus import Outbox
from oih_runtime.clock import aware, utcnow
from oih_runtime.db import transaction

from . import components as component_info
from .amqp import Amqp
from .components import ComponentLookup
from .credentials import CredentialsFailed, Resolve, step_credentials
from .drivers import FAILED as WORKER_FAILED
from .drivers import RESTARTING, RUNNING, STARTING, Driver, WorkerInfo
from .management import USER_PREFIX, Management, new_password, user_name, vhost_of
from .models import (
    ACTIVE,
    FAILED,
    RUNNING_STATES,
    STOPPED,
    STOPPING,
    DeploymentRow,
)
from .models import STARTING as DEPLOYING
from .snapshots import SnapshotReader, SnapshotsUnavailable
from .tasks import FlowTasks

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


class Cancelled(Exception):
    """A start gave way to a newer request for its flow (or to a shutdown)."""


#: How often the reconciler lists the broker's users to find strays (see `reconcile`).
USER_SWEEP_SECONDS = 300.0


class ReportsSink(Protocol):
    """Where the workers' reports go: the executions view (`executions.ReportsConsumer`).

    The orchestrator follows a flow's reports queue while the flow runs and drains it when the
    flow stops, after the workers exited and before the queue is deleted."""

    def follow(self, flow_id: str, tenant: str, specs: Sequence[StepSpec] | None = None
               ) -> None: ...

    def drain(self, flow_id: str, *, tenant: str = "", specs: Sequence[StepSpec] | None = None,
              timeout: float = 15.0) -> int: ...


class Orchestrator:
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
        self._next_user_sweep = 0.0  # the first reconcile round looks for stray users
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

    def close(self, timeout: float = 60.0) -> None:
        """Cancel starts in progress (their rows stay STARTING) and wait for running tasks."""
        self.tasks.close(timeout)

    def _submit(self, flow_id: str, task: Any) -> None:
        """Queue `task(cancel, request)`; `request` numbers it among the flow's requests."""
        with self._locks_guard:
            request = self._requests[flow_id] = self._requests.get(flow_id, 0) + 1
        self.tasks.submit(flow_id, lambda cancel: task(cancel, request))

    def _latest(self, flow_id: str, request: int) -> bool:
        with self._locks_guard:
            return self._requests.get(flow_id) == request

    def _after_commit(self, session: Session, action: Any) -> None:
        """Run `action` once `session` committed (never when it rolls back)."""
        event.listen(session, "after_commit", lambda _session: action(), once=True)

    # --- start -----------------------------------------------------------------------------

    def start(self, session: Session, flow: flows_pb2.Flow, started_by: str) -> None:
        """`oih.flow.starting`: record the intent (the row, STARTING, with the flow) in the
        caller's transaction; once it committed, a background task deploys. A start that
        already runs (same version, every worker there) is answered at once."""
        flow_id = flow_id_of(flow)
        row = session.get(DeploymentRow, flow_id)
        version = flow.running_version or flow.version
        if (row is not None and row.state == ACTIVE and row.flow_version == version
                and not self.tasks.busy(flow_id) and not self._missing(row)):
            # Started twice (e.g. after a transition timeout): it runs; say so again.
            self._emit_started(session, row)
            return
        if row is None:
            row = DeploymentRow(flow_id=flow_id, tenant=flow.tenant, state=DEPLOYING)
        row.tenant, row.started_by, row.driver = flow.tenant, started_by, self.driver.name
        row.flow_version = version
        row.flow = json_format.MessageToDict(flow)
        self._set(row, DEPLOYING)
        session.add(row)
        self._after_commit(session, lambda: self._submit(
            flow_id, lambda cancel, request: self.finish_start(flow_id, cancel, request)))

    def finish_start(self, flow_id: str, cancel: threading.Event, request: int) -> None:
        """The background half of a start (also a STARTING row left by a crash)."""
        if not self._latest(flow_id, request):
            return  # a newer request is queued behind us
        with self.locked(flow_id):
            with Session(self.engine) as session:
                row = session.get(DeploymentRow, flow_id)
            if row is None or row.state != DEPLOYING or not row.flow:
                return  # stopped or failed meanwhile: that request's task answers
            flow = json_format.ParseDict(row.flow, flows_pb2.Flow(), ignore_unknown_fields=True)
            steps = [node.id for node in flow.graph.nodes]
            if row.specs or flow_id in self.driver.flows():
                # A previous version (or a start cut short by a crash): replaced as a whole.
                self.teardown(flow_id, self._steps(row), row=row, discard=False)
            try:
                self._deploy(flow, row.started_by, cancel)
            except Cancelled:
                # The newer request queued behind us cleans up (a stop, or a start that
                # replaces what we made); at shutdown the row stays STARTING for a restart.
                log.info("flow start cancelled", extra={"flow_id": flow_id})
                return
            except Exception as error:  # every failure: clean up, then tell why
                reason = str(error) if isinstance(error, StartFailed) else \
                    f"could not start the flow: {type(error).__name__}: {error}"
                log.warning("flow start failed", extra={"flow_id": flow_id, "reason": reason})
                self.teardown(flow_id, steps, tenant=flow.tenant, discard=False)
                with transaction(self.engine) as session:
                    row = session.get(DeploymentRow, flow_id)
                    if row is None or row.state != DEPLOYING:
                        return
                    self._set(row, FAILED, reason)
                    session.add(row)
                    OUTBOX.add(session, "oih.flow.failed", orchestrator_pb2.FlowFailed(
                        flow=flow.name, reason=reason, tenant=flow.tenant),
                        tenant=flow.tenant, subject=flow.name)
                return
            with transaction(self.engine) as session:
                row = session.get(DeploymentRow, flow_id)
                if row is None or row.state != DEPLOYING or cancel.is_set():
                    return  # a stop arrived at the last moment: its task removes it all
                self._set(row, ACTIVE)
                session.add(row)
                self._follow(row)
                self._emit_started(session, row)

    def _deploy(self, flow: flows_pb2.Flow, started_by: str, cancel: threading.Event) -> None:
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
        secrets = self._credentials(flow)
        if self.snapshots is not None:
            try:
                stored = self.snapshots.persistent(flow_id)
            except SnapshotsUnavailable as error:
                raise StartFailed(str(error)) from None
            for spec in specs:
                spec.snapshot, spec.snapshot_sequence = stored.get(spec.step_id, ({}, 0))
        # Recorded before anything is created: after a crash the row names what to clean up.
        with transaction(self.engine) as session:
            row = session.get(DeploymentRow, flow_id)
            if row is None or row.state != DEPLOYING or cancel.is_set():
                raise Cancelled()
            row.entry_step = first
            row.specs = [asdict(spec) for spec in specs]
            row.broker_users = {s: user_name(flow_id, s) for s in steps}
            row.components = {node.id: node.component for node in flow.graph.nodes}
            session.add(row)
        self.amqp.declare_flow(flow_id, {spec.step_id: spec.retry.retry_levels for spec in specs})
        if cancel.is_set():
            raise Cancelled()
        with_passwords = [self._with_new_password(spec) for spec in specs]
        self.driver.deploy(flow_id, with_passwords, found, secrets)
        self._await_consumers(flow_id, steps, cancel)

    def _credentials(self, flow: flows_pb2.Flow,
                     steps: Iterable[str] | None = None) -> dict[str, bytes]:
        """The resolved credentials of the flow's steps (of `steps`) that name a secret."""
        wanted = None if steps is None else set(steps)
        if self.resolve is None:
            if any(n.credentials for n in flow.graph.nodes if wanted is None or n.id in wanted):
                raise StartFailed("this orchestrator has no Secrets service to resolve "
                                  "credentials with")
            return {}
        try:
            return step_credentials(flow, self.resolve, wanted)
        except CredentialsFailed as error:
            raise StartFailed(str(error)) from None

    def _component(self, node: flows_pb2.Node) -> components_pb2.Component:
        component = self.components(node.component)
        if component is None:
            raise StartFailed(f"step {node.id}: component {node.component} does not exist")
        functions = {f.name for f in [*component.triggers, *component.actions]}
        if node.function not in functions:
            raise StartFailed(f"step {node.id}: component {node.component} has no function "
                              f"{node.function!r}")
        reason = self.driver.refusal(component)
        if reason:
            raise StartFailed(f"step {node.id}: {reason}")
        return component

    def _spec(self, flow: flows_pb2.Flow, node: flows_pb2.Node,
              component: components_pb2.Component) -> StepSpec:
        return spec_from_flow(flow, node.id, self.worker_url,
                              component_info.entry_point(component))

    def with_latest_snapshot(self, spec: StepSpec) -> StepSpec:
        """`spec` with its step's latest persistent snapshot, when the Snapshots service has
        a newer one than the spec (for a worker the driver restarts)."""
        if self.snapshots is None:
            return spec
        data, sequence = self.snapshots.persistent(spec.flow_id).get(spec.step_id, ({}, 0))
        if sequence <= spec.snapshot_sequence:
            return spec
        return replace(spec, snapshot=data, snapshot_sequence=sequence)

    def _with_new_password(self, spec: StepSpec) -> StepSpec:
        """Create (or reset) the step's broker user and return the spec that logs in as it."""
        user = user_name(spec.flow_id, spec.step_id)
        password = new_password()
        self.management.put_user(user, password)
        self.management.set_permissions(self.vhost, user,
                                        topology.step_permissions(spec.flow_id, spec.step_id))
        return StepSpec.from_dict({**asdict(spec), "amqp_url": with_credentials(
            self.worker_url, user, password)})

    def _await_consumers(self, flow_id: str, steps: list[str],
                         cancel: threading.Event | None = None) -> None:
        deadline = time.monotonic() + self.start_timeout
        waiting = set(steps)
        while waiting:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
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
                (cancel or threading.Event()).wait(0.1)

    # --- stop and failure ------------------------------------------------------------------

    def stop(self, session: Session, flow: flows_pb2.Flow) -> None:
        """`oih.flow.stopping`: record STOPPING in the caller's transaction and stop in the
        background (a start in progress gives way); the stop answers `oih.flow.stopped`. A flow
        this orchestrator has no row of is cleaned (strays) and answered right here."""
        flow_id = flow_id_of(flow)
        steps = {node.id for node in flow.graph.nodes}
        row = session.get(DeploymentRow, flow_id)
        if row is None:
            with self.locked(flow_id):
                discarded = self.teardown(flow_id, sorted(steps))
            self._emit(session, "oih.flow.stopped", flow_id, flow.tenant, discarded)
            return
        self._set(row, STOPPING)
        session.add(row)
        self._after_commit(session, lambda: self._submit(
            flow_id, lambda cancel, request: self.finish_stop(flow_id, steps)))

    def finish_stop(self, flow_id: str, steps: Iterable[str] = ()) -> None:
        """The background half of a stop (also a STOPPING row left by a crash): remove
        everything, STOPPED (unless a newer start came meanwhile), `oih.flow.stopped`."""
        with self.locked(flow_id):
            with Session(self.engine) as session:
                row = session.get(DeploymentRow, flow_id)
            if row is None:
                return
            discarded = self.teardown(flow_id, set(steps) | set(self._all_steps(row)), row=row)
            with transaction(self.engine) as session:
                row = session.get(DeploymentRow, flow_id)
                if row is None:
                    return
                if row.state == STOPPING:
                    self._set(row, STOPPED, f"stopped; {discarded} queued messages discarded"
                              if discarded else "")
                    session.add(row)
                self._emit(session, "oih.flow.stopped", flow_id, row.tenant, discarded)

    def failed_elsewhere(self, session: Session, flow_id: str, reason: str) -> None:
        """Another service failed the flow (e.g. a start timed out): remove what we made."""
        row = session.get(DeploymentRow, flow_id)
        if row is not None and row.state != STOPPED:
            self._set(row, FAILED, reason)
            session.add(row)
        self._after_commit(session, lambda: self._submit(
            flow_id, lambda cancel, request: self._remove_failed(flow_id)))

    def _remove_failed(self, flow_id: str) -> None:
        with self.locked(flow_id):
            with Session(self.engine) as session:
                row = session.get(DeploymentRow, flow_id)
            if row is not None and row.state in (*RUNNING_STATES, STOPPING):
                return  # started or stopping again meanwhile: that request decides
            self.teardown(flow_id, self._all_steps(row), row=row, discard=False)

    def teardown(self, flow_id: str, steps: Iterable[str], *, row: DeploymentRow | None = None,
                 tenant: str = "", discard: bool = True) -> int:
        """Workers first (SIGTERM: they finish, ack and send their last reports), then the
        flow's reports queue is merged into the executions view, then the users, then the
        queues: with `discard` (a stop) whatever they hold, else only if they hold nothing.
        Returns how many messages the deleted queues still held. Each part is idempotent, so a
        teardown interrupted by a crash can simply run again."""
        steps = sorted(set(steps))
        self.driver.remove(flow_id)
        deadline = time.monotonic() + self.stop_timeout
        while self.driver.workers(flow_id) and time.monotonic() < deadline:
            time.sleep(0.2)  # e.g. pods in their grace period
        if self.reports is not None:
            try:
                self.reports.drain(flow_id, tenant=row.tenant if row is not None else tenant,
                                   specs=[StepSpec.from_dict(raw) for raw in row.specs]
                                   if row is not None else None)
            except Exception:  # reports are a view: never let them block a stop
                log.exception("could not merge the last reports", extra={"flow_id": flow_id})
        # By name (a missing user is fine): listing the broker's users costs as much as there
        # are users and fails while other stops delete theirs (management.py). A user of a step
        # known to neither the row nor the flow is a stray; the reconciler finds those.
        for user in sorted({user_name(flow_id, step) for step in steps}
                           | set((row.broker_users or {}).values() if row is not None else ())):
            self.management.delete_user(user)
        if not steps:
            return 0
        discarded = self._queued(flow_id, steps)
        if discarded and not discard:
            log.warning("keeping the flow's queues: they hold messages",
                        extra={"flow_id": flow_id, "messages": discarded})
            return 0
        self.amqp.delete_flow(flow_id, steps)
        if discarded:
            log.warning("stop discarded queued messages",
                        extra={"flow_id": flow_id, "messages": discarded})
        return discarded

    def _queued(self, flow_id: str, steps: Iterable[str]) -> int:
        """Messages waiting in the flow's step queues (inputs, retries, dead letters)."""
        total = 0
        for step_id in steps:
            queues = [topology.step_queue(flow_id, step_id), topology.dead_queue(flow_id, step_id),
                      *(topology.retry_queue(flow_id, step_id, level)
                        for level in range(1, topology.MAX_RETRY_LEVELS + 1))]
            for queue in queues:
                count = self.amqp.count(queue)
                total += count.messages if count is not None else 0
        return total

    # --- reconcile -------------------------------------------------------------------------

    def reconcile(self) -> None:
        with transaction(self.engine) as session:
            rows = list(session.exec(select(DeploymentRow).where(
                col(DeploymentRow.state).in_((*RUNNING_STATES, STOPPING)))).all())
        wanted = {row.flow_id for row in rows if row.state in RUNNING_STATES}
        for row in rows:
            with self._per_flow(row.flow_id, "reconcile"):
                self._reconcile_row(row)
        for flow_id in sorted(self.driver.flows() - wanted):
            if self.tasks.busy(flow_id):
                continue
            with self._per_flow(flow_id, "remove a stray flow"), \
                    self.locked(flow_id, blocking=False) as mine:
                if mine and not self._wanted(flow_id):
                    # E.g. stopped while this orchestrator was down, or a stop cut short. Its
                    # queues go only if the flow was stopped (or is gone), not if it failed.
                    log.warning("removing a stray flow", extra={"flow_id": flow_id})
                    self.teardown(flow_id, self._known_steps(flow_id),
                                  discard=self._stopped(flow_id))
        # Stray broker users are rare (a teardown cut short by a crash; teardowns are retried)
        # and listing them costs as much as the broker has users: look at start-up, then every
        # USER_SWEEP_SECONDS, not every round. Only users of flows this orchestrator deployed
        # (it has a row for them): another orchestrator with its own database may share the
        # broker.
        if time.monotonic() < self._next_user_sweep:
            return
        self._next_user_sweep = time.monotonic() + USER_SWEEP_SECONDS
        with self._per_flow("*", "delete stray broker users"):
            for user in self.management.users():
                flow_id = user[len(USER_PREFIX):].split(".", 1)[0]
                if flow_id not in wanted and not self.tasks.busy(flow_id):
                    with self.locked(flow_id, blocking=False) as mine:
                        if mine and self._known(flow_id) and not self._wanted(flow_id):
                            log.warning("deleting a stray broker user", extra={"user": user})
                            self.management.delete_user(user)

    @contextmanager
    def _per_flow(self, flow_id: str, what: str) -> Iterator[None]:
        """One flow's error (the broker or the management API away) must not end the round."""
        try:
            yield
        except Exception as error:
            log.warning("could not %s; trying again next round", what,
                        extra={"flow_id": flow_id, "error": f"{type(error).__name__}: {error}"})

    def _reconcile_row(self, row: DeploymentRow) -> None:
        if row.state == ACTIVE:
            self._heal(row.flow_id)
        elif self._unfinished(row):
            # A start or stop a previous orchestrator acknowledged but did not finish.
            log.warning("finishing an interrupted %s", "start" if row.state == DEPLOYING
                        else "stop", extra={"flow_id": row.flow_id})
            flow_id = row.flow_id
            if row.state == DEPLOYING:
                self._submit(flow_id, lambda cancel, request, flow_id=flow_id:
                             self.finish_start(flow_id, cancel, request))
            else:
                self._submit(flow_id, lambda cancel, request, flow_id=flow_id:
                             self.finish_stop(flow_id))

    def _unfinished(self, row: DeploymentRow) -> bool:
        """A STARTING or STOPPING row nobody here works on: changed before this process began
        (a crash or restart cut it short), or long enough ago that its task must be gone."""
        if row.state not in (DEPLOYING, STOPPING) or self.tasks.busy(row.flow_id):
            return False
        changed = aware(row.update_time)
        stale = (utcnow() - changed).total_seconds() > self.start_timeout + self.stop_timeout
        return changed < self.born or stale

    def _heal(self, flow_id: str) -> None:
        with self.locked(flow_id, blocking=False) as mine:
            if not mine or self.tasks.busy(flow_id):
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
                    self.teardown(flow_id, self._steps(row), row=row, discard=False)
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
                    flow = json_format.ParseDict(row.flow or {}, flows_pb2.Flow(),
                                                 ignore_unknown_fields=True)
                    try:
                        secrets = self._credentials(flow, [s.step_id for s in missing])
                    except StartFailed as error:
                        log.warning("cannot deploy missing workers",
                                    extra={"flow_id": flow_id, "reason": str(error)})
                        return  # the next round tries again (the Secrets service may be back)
                    self.driver.deploy(flow_id, [self._with_new_password(s) for s in missing],
                                       found, secrets)

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

    def _stopped(self, flow_id: str) -> bool:
        """Whether the flow was stopped (or is unknown here): its queues may go."""
        with Session(self.engine) as session:
            row = session.get(DeploymentRow, flow_id)
            return row is None or row.state in (STOPPING, STOPPED)

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

    def _all_steps(self, row: DeploymentRow | None) -> list[str]:
        """The steps of the deployed specs and of the flow last asked to start."""
        if row is None:
            return []
        nodes = (row.flow or {}).get("graph", {}).get("nodes", [])
        return sorted(set(self._steps(row)) | {node["id"] for node in nodes if node.get("id")})

    @staticmethod
    def _emit(session: Session, event_type: str, flow_id: str, tenant: str,
              discarded: int = 0) -> None:
        name = flow_name(flow_id)
        OUTBOX.add(session, event_type, orchestrator_pb2.FlowStateChanged(
            flow=name, tenant=tenant, discarded_messages=discarded),
            tenant=tenant, subject=name)

    @staticmethod
    def _emit_started(session: Session, row: DeploymentRow) -> None:
        name = flow_name(row.flow_id)
        OUTBOX.add(session, "oih.flow.started", orchestrator_pb2.FlowStateChanged(
            flow=name, tenant=row.tenant), tenant=row.tenant, subject=name)
