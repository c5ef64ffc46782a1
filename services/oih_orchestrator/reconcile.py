"""Reconcile (at start-up and periodically): make what runs agree with the deployments table.

Every ACTIVE deployment has its workers (missing ones are deployed again with a fresh broker
password), a worker the driver gave up on fails its flow, unfinished STARTING/STOPPING rows are
finished, and nothing runs for a flow that is not STARTING or ACTIVE (stray workers and users
go). Each flow is reconciled on its own: an error with one (the broker or the management API
away) is logged and the round goes on with the next.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from google.protobuf import json_format
from sqlmodel import Session, col, select

from oih.components.v1 import components_pb2
from oih.flows.v1 import flows_pb2
from oih_runtime.clock import aware, utcnow
from oih_runtime.db import transaction

from . import drivers, vetting
from .broker_users import with_new_password
from .context import Context, StartFailed, emit_failed, set_state, steps_of
from .deployments import Deployments
from .management import USER_PREFIX
from .models import RUNNING_STATES, DeploymentRow
from .models import DeploymentState as State
from .teardown import teardown

log = logging.getLogger(__name__)

#: How often the reconciler lists the broker's users to find strays (see `reconcile`).
USER_SWEEP_SECONDS = 300.0


class Reconciler:
    def __init__(self, ctx: Context, deployments: Deployments) -> None:
        self.ctx = ctx
        self.deployments = deployments
        self._next_user_sweep = 0.0  # the first reconcile round looks for stray users

    def reconcile(self) -> None:
        ctx = self.ctx
        with transaction(ctx.engine) as session:
            rows = list(session.exec(select(DeploymentRow).where(
                col(DeploymentRow.state).in_((*RUNNING_STATES, State.STOPPING)))).all())
        wanted = {row.flow_id for row in rows if row.state in RUNNING_STATES}
        for row in rows:
            with _per_flow(row.flow_id, "reconcile"):
                self._reconcile_row(row)
        for flow_id in sorted(ctx.driver.flows() - wanted):
            if ctx.tasks.busy(flow_id):
                continue
            with _per_flow(flow_id, "remove a stray flow"), \
                    ctx.locked(flow_id, blocking=False) as mine:
                if mine and not self._wanted(flow_id):
                    # E.g. stopped while this orchestrator was down, or a stop cut short. Its
                    # queues go only if the flow was stopped (or is gone), not if it failed.
                    log.warning("removing a stray flow", extra={"flow_id": flow_id})
                    teardown(ctx, flow_id, self._known_steps(flow_id),
                             discard=self._stopped(flow_id))
        # Stray broker users are rare (a teardown cut short by a crash; teardowns are retried)
        # and listing them costs as much as the broker has users: look at start-up, then every
        # USER_SWEEP_SECONDS, not every round. Only users of flows this orchestrator deployed
        # (it has a row for them): another orchestrator with its own database may share the
        # broker.
        if time.monotonic() < self._next_user_sweep:
            return
        self._next_user_sweep = time.monotonic() + USER_SWEEP_SECONDS
        with _per_flow("*", "delete stray broker users"):
            for user in ctx.management.users():
                flow_id = user[len(USER_PREFIX):].split(".", 1)[0]
                if flow_id not in wanted and not ctx.tasks.busy(flow_id):
                    with ctx.locked(flow_id, blocking=False) as mine:
                        if mine and self._known(flow_id) and not self._wanted(flow_id):
                            log.warning("deleting a stray broker user", extra={"user": user})
                            ctx.management.delete_user(user)

    def _reconcile_row(self, row: DeploymentRow) -> None:
        if row.state == State.ACTIVE:
            self._heal(row.flow_id)
        elif self._unfinished(row):
            # A start or stop a previous orchestrator acknowledged but did not finish.
            log.warning("finishing an interrupted %s", "start" if row.state == State.STARTING
                        else "stop", extra={"flow_id": row.flow_id})
            flow_id = row.flow_id
            deployments = self.deployments
            if row.state == State.STARTING:
                self.ctx.submit(flow_id, lambda cancel, request:
                                deployments.finish_start(flow_id, cancel, request))
            else:
                self.ctx.submit(flow_id, lambda cancel, request:
                                deployments.finish_stop(flow_id))

    def _unfinished(self, row: DeploymentRow) -> bool:
        """A STARTING or STOPPING row nobody here works on: changed before this process began
        (a crash or restart cut it short), or long enough ago that its task must be gone."""
        ctx = self.ctx
        if row.state not in (State.STARTING, State.STOPPING) or ctx.tasks.busy(row.flow_id):
            return False
        changed = aware(row.update_time)
        stale = (utcnow() - changed).total_seconds() > ctx.start_timeout + ctx.stop_timeout
        return changed < ctx.born or stale

    def _heal(self, flow_id: str) -> None:
        ctx = self.ctx
        with ctx.locked(flow_id, blocking=False) as mine:
            if not mine or ctx.tasks.busy(flow_id):
                return  # a start or stop is busy with it; next round
            with transaction(ctx.engine) as session:
                row = session.get(DeploymentRow, flow_id)
                if row is None or row.state != State.ACTIVE:
                    return
                workers = ctx.driver.workers(flow_id)
                broken = [w for w in workers if w.state == drivers.FAILED]
                if broken:
                    reason = (f"step {broken[0].step_id}: the worker keeps crashing "
                              f"({broken[0].state_reason})")
                    teardown(ctx, flow_id, steps_of(row), row=row, discard=False)
                    set_state(row, State.FAILED, reason)
                    session.add(row)
                    emit_failed(session, flow_id, row.tenant, reason)
                    return
                ctx.follow(row)
                missing = ctx.missing(row, workers)
                if missing:
                    log.warning("deploying missing workers",
                                extra={"flow_id": flow_id, "steps": [s.step_id for s in missing]})
                    found = {s.step_id: self._component_of(row, s.step_id) for s in missing}
                    flow = json_format.ParseDict(row.flow or {}, flows_pb2.Flow(),
                                                 ignore_unknown_fields=True)
                    try:
                        secrets = vetting.credentials(ctx, flow, [s.step_id for s in missing])
                    except StartFailed as error:
                        log.warning("cannot deploy missing workers",
                                    extra={"flow_id": flow_id, "reason": str(error)})
                        return  # the next round tries again (the Secrets service may be back)
                    ctx.driver.deploy(flow_id, [with_new_password(ctx.management, ctx.vhost,
                                                                  ctx.worker_url, s)
                                                for s in missing], found, secrets)

    def _component_of(self, row: DeploymentRow, step_id: str) -> components_pb2.Component:
        component = self.ctx.components(row.components.get(step_id, ""))
        return component if component is not None else components_pb2.Component()

    def _known_steps(self, flow_id: str) -> list[str]:
        with Session(self.ctx.engine) as session:
            return steps_of(session.get(DeploymentRow, flow_id))

    def _known(self, flow_id: str) -> bool:
        with Session(self.ctx.engine) as session:
            return session.get(DeploymentRow, flow_id) is not None

    def _stopped(self, flow_id: str) -> bool:
        """Whether the flow was stopped (or is unknown here): its queues may go."""
        with Session(self.ctx.engine) as session:
            row = session.get(DeploymentRow, flow_id)
            return row is None or row.state in (State.STOPPING, State.STOPPED)

    def _wanted(self, flow_id: str) -> bool:
        with Session(self.ctx.engine) as session:
            row = session.get(DeploymentRow, flow_id)
            return row is not None and row.state in RUNNING_STATES


@contextmanager
def _per_flow(flow_id: str, what: str) -> Iterator[None]:
    """One flow's error (the broker or the management API away) must not end the round."""
    try:
        yield
    except Exception as error:
        log.warning("could not %s; trying again next round", what,
                    extra={"flow_id": flow_id, "error": f"{type(error).__name__}: {error}"})
