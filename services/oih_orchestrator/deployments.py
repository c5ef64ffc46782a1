"""Starting and stopping flows: intent, then work.

The event handlers (`start`, `stop`, `failed_elsewhere`) only record what was asked in the
deployment row, in the event's transaction (STARTING with the flow itself; STOPPING; FAILED),
and once that committed queue a background task (`tasks.FlowTasks`: one flow's tasks in order,
different flows in parallel). So the event consumer never waits for workers, and a crash after
the ack leaves a row the reconciler (`reconcile.py`) finishes on restart: a STARTING row is
started again from the stored flow (answering `oih.flow.started` or `oih.flow.failed`), a
STOPPING row is stopped (`oih.flow.stopped`). A newer request of the same flow cancels a start
still in progress; the newer request's task then cleans up, so a stop during a start wins.

Start (task): remove what a previous version left, vet the flow and look up each node's
component (`vetting.py`), record the specs and broker user names (so a crash half-way leaves a
trail to clean up), declare the flow's topology, create one broker user per step with exactly
`topology.step_permissions` (`broker_users.py`), deploy one worker per step through the
driver, wait until every step's queue has a consumer, then ACTIVE + `oih.flow.started`. Any
failure removes everything created and answers `oih.flow.failed` with the reason — a flow is
never left half-started (OIH #486, #926, #1088).

Stop (task): `teardown.teardown` — the workers first (SIGTERM: they finish the messages they
hold and send their last reports), then the reports left in the flow's reports queue are
merged into the executions view, then the broker users and the topology go; STOPPED,
`oih.flow.stopped`, which says how many messages still waiting in the flow's queues the stop
discarded (a stop does not drain a backlog). Stopping cleans whatever exists, known to the
table or not, so it always succeeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, replace

from google.protobuf import json_format
from sqlmodel import Session

from oih.flows.v1 import flows_pb2
from oih_dataplane import topology
from oih_dataplane.spec import StepSpec, flow_id_of
from oih_runtime.db import transaction

from . import drivers, vetting
from .broker_users import with_new_password
from .context import (
    Cancelled,
    Context,
    StartFailed,
    after_commit,
    all_steps,
    emit,
    emit_failed,
    emit_started,
    set_state,
    steps_of,
)
from .management import user_name
from .models import RUNNING_STATES, DeploymentRow
from .models import DeploymentState as State
from .snapshots import SnapshotsUnavailable
from .teardown import teardown

log = logging.getLogger(__name__)


class Deployments:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # --- start -----------------------------------------------------------------------------

    def start(self, session: Session, flow: flows_pb2.Flow, started_by: str) -> None:
        """`oih.flow.starting`: record the intent (the row, STARTING, with the flow) in the
        caller's transaction; once it committed, a background task deploys. A start that
        already runs (same version, every worker there) is answered at once."""
        ctx = self.ctx
        flow_id = flow_id_of(flow)
        row = session.get(DeploymentRow, flow_id)
        version = flow.running_version or flow.version
        if (row is not None and row.state == State.ACTIVE and row.flow_version == version
                and not ctx.tasks.busy(flow_id) and not ctx.missing(row)):
            # Started twice (e.g. after a transition timeout): it runs; say so again.
            emit_started(session, row)
            return
        if row is None:
            row = DeploymentRow(flow_id=flow_id, tenant=flow.tenant, state=State.STARTING)
        row.tenant, row.started_by, row.driver = flow.tenant, started_by, ctx.driver.name
        row.flow_version = version
        row.flow = json_format.MessageToDict(flow)
        set_state(row, State.STARTING)
        session.add(row)
        after_commit(session, lambda: ctx.submit(
            flow_id, lambda cancel, request: self.finish_start(flow_id, cancel, request)))

    def finish_start(self, flow_id: str, cancel: threading.Event, request: int) -> None:
        """The background half of a start (also a STARTING row left by a crash)."""
        ctx = self.ctx
        if not ctx.latest(flow_id, request):
            return  # a newer request is queued behind us
        with ctx.locked(flow_id):
            with Session(ctx.engine) as session:
                row = session.get(DeploymentRow, flow_id)
            if row is None or row.state != State.STARTING or not row.flow:
                return  # stopped or failed meanwhile: that request's task answers
            flow = json_format.ParseDict(row.flow, flows_pb2.Flow(), ignore_unknown_fields=True)
            steps = [node.id for node in flow.graph.nodes]
            if row.specs or flow_id in ctx.driver.flows():
                # A previous version (or a start cut short by a crash): replaced as a whole.
                teardown(ctx, flow_id, steps_of(row), row=row, discard=False)
            try:
                self._deploy(flow, cancel)
            except Cancelled:
                # The newer request queued behind us cleans up (a stop, or a start that
                # replaces what we made); at shutdown the row stays STARTING for a restart.
                log.info("flow start cancelled", extra={"flow_id": flow_id})
                return
            except Exception as error:  # every failure: clean up, then tell why
                reason = str(error) if isinstance(error, StartFailed) else \
                    f"could not start the flow: {type(error).__name__}: {error}"
                log.warning("flow start failed", extra={"flow_id": flow_id, "reason": reason})
                teardown(ctx, flow_id, steps, tenant=flow.tenant, discard=False)
                with transaction(ctx.engine) as session:
                    row = session.get(DeploymentRow, flow_id)
                    if row is None or row.state != State.STARTING:
                        return
                    set_state(row, State.FAILED, reason)
                    session.add(row)
                    emit_failed(session, flow_id, flow.tenant, reason)
                return
            with transaction(ctx.engine) as session:
                row = session.get(DeploymentRow, flow_id)
                if row is None or row.state != State.STARTING or cancel.is_set():
                    return  # a stop arrived at the last moment: its task removes it all
                set_state(row, State.ACTIVE)
                session.add(row)
                ctx.follow(row)
                emit_started(session, row)

    def _deploy(self, flow: flows_pb2.Flow, cancel: threading.Event) -> None:
        ctx = self.ctx
        flow_id = flow_id_of(flow)
        first = vetting.entry_step(flow)
        steps = [node.id for node in flow.graph.nodes]
        vetting.check_ids(flow_id, steps)
        found = {node.id: vetting.component(ctx, node) for node in flow.graph.nodes}
        specs = [vetting.spec(ctx, flow, node, found[node.id]) for node in flow.graph.nodes]
        secrets = vetting.credentials(ctx, flow)
        if ctx.snapshots is not None:
            try:
                stored = ctx.snapshots.persistent(flow_id)
            except SnapshotsUnavailable as error:
                raise StartFailed(str(error)) from None
            for spec in specs:
                spec.snapshot, spec.snapshot_sequence = stored.get(spec.step_id, ({}, 0))
        # Recorded before anything is created: after a crash the row names what to clean up.
        with transaction(ctx.engine) as session:
            row = session.get(DeploymentRow, flow_id)
            if row is None or row.state != State.STARTING or cancel.is_set():
                raise Cancelled()
            row.entry_step = first
            row.specs = [asdict(spec) for spec in specs]
            row.broker_users = {s: user_name(flow_id, s) for s in steps}
            row.components = {node.id: node.component for node in flow.graph.nodes}
            session.add(row)
        ctx.amqp.declare_flow(flow_id, {spec.step_id: spec.retry.retry_levels for spec in specs})
        if cancel.is_set():
            raise Cancelled()
        with_passwords = [with_new_password(ctx.management, ctx.vhost, ctx.worker_url, spec)
                          for spec in specs]
        ctx.driver.deploy(flow_id, with_passwords, found, secrets)
        self._await_consumers(flow_id, steps, cancel)

    def _await_consumers(self, flow_id: str, steps: list[str],
                         cancel: threading.Event | None = None) -> None:
        ctx = self.ctx
        deadline = time.monotonic() + ctx.start_timeout
        waiting = set(steps)
        while waiting:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            for step_id in sorted(waiting):
                count = ctx.amqp.count(topology.step_queue(flow_id, step_id))
                if count is not None and count.consumers > 0:
                    waiting.discard(step_id)
            for worker in ctx.driver.workers(flow_id):
                # A worker that dies before it consumed is broken (bad entry point, import
                # error): fail now, not after the supervisor's back-off gives up.
                if (worker.step_id in waiting
                        and worker.state in (drivers.RESTARTING, drivers.FAILED)):
                    raise StartFailed(f"step {worker.step_id}: the worker did not start "
                                      f"({worker.state_reason})")
            if waiting and time.monotonic() > deadline:
                raise StartFailed(f"steps {', '.join(sorted(waiting))}: no worker consumed "
                                  f"within {ctx.start_timeout:.0f}s")
            if waiting:
                (cancel or threading.Event()).wait(0.1)

    def with_latest_snapshot(self, spec: StepSpec) -> StepSpec:
        """`spec` with its step's latest persistent snapshot, when the Snapshots service has
        a newer one than the spec (for a worker the driver restarts)."""
        if self.ctx.snapshots is None:
            return spec
        data, sequence = self.ctx.snapshots.persistent(spec.flow_id).get(spec.step_id, ({}, 0))
        if sequence <= spec.snapshot_sequence:
            return spec
        return replace(spec, snapshot=data, snapshot_sequence=sequence)

    # --- stop and failure ------------------------------------------------------------------

    def stop(self, session: Session, flow: flows_pb2.Flow) -> None:
        """`oih.flow.stopping`: record STOPPING in the caller's transaction and stop in the
        background (a start in progress gives way); the stop answers `oih.flow.stopped`. A flow
        this orchestrator has no row of is cleaned (strays) and answered right here."""
        ctx = self.ctx
        flow_id = flow_id_of(flow)
        steps = {node.id for node in flow.graph.nodes}
        row = session.get(DeploymentRow, flow_id)
        if row is None:
            with ctx.locked(flow_id):
                discarded = teardown(ctx, flow_id, sorted(steps))
            emit(session, "oih.flow.stopped", flow_id, flow.tenant, discarded)
            return
        set_state(row, State.STOPPING)
        session.add(row)
        after_commit(session, lambda: ctx.submit(
            flow_id, lambda cancel, request: self.finish_stop(flow_id, steps)))

    def finish_stop(self, flow_id: str, steps: Iterable[str] = ()) -> None:
        """The background half of a stop (also a STOPPING row left by a crash): remove
        everything, STOPPED (unless a newer start came meanwhile), `oih.flow.stopped`."""
        ctx = self.ctx
        with ctx.locked(flow_id):
            with Session(ctx.engine) as session:
                row = session.get(DeploymentRow, flow_id)
            if row is None:
                return
            discarded = teardown(ctx, flow_id, set(steps) | set(all_steps(row)), row=row)
            with transaction(ctx.engine) as session:
                row = session.get(DeploymentRow, flow_id)
                if row is None:
                    return
                if row.state == State.STOPPING:
                    set_state(row, State.STOPPED, f"stopped; {discarded} queued messages discarded"
                              if discarded else "")
                    session.add(row)
                emit(session, "oih.flow.stopped", flow_id, row.tenant, discarded)

    def failed_elsewhere(self, session: Session, flow_id: str, reason: str) -> None:
        """Another service failed the flow (e.g. a start timed out): remove what we made."""
        row = session.get(DeploymentRow, flow_id)
        if row is not None and row.state != State.STOPPED:
            set_state(row, State.FAILED, reason)
            session.add(row)
        after_commit(session, lambda: self.ctx.submit(
            flow_id, lambda cancel, request: self._remove_failed(flow_id)))

    def _remove_failed(self, flow_id: str) -> None:
        ctx = self.ctx
        with ctx.locked(flow_id):
            with Session(ctx.engine) as session:
                row = session.get(DeploymentRow, flow_id)
            if row is not None and row.state in (*RUNNING_STATES, State.STOPPING):
                return  # started or stopping again meanwhile: that request decides
            teardown(ctx, flow_id, all_steps(row), row=row, discard=False)
