"""The flow lifecycle events that arm and disarm schedules, as `(session, event, payload)`
handlers run by the bus inside a transaction that also records the event id (a redelivered
event is a no-op).

- `oih.flow.starting` (the flow with its cron): creates the schedule, or refreshes its cron,
  keeping time zone, pause and policies; a flow starting without a cron loses its schedule.
- `oih.flow.started`: the orchestrator runs the flow; the schedule arms (next run from now).
- `oih.flow.stopping` / `stopped` / `failed`: disarmed (no next run) until started again.
- `oih.flow.deleted`, `oih.iam.tenant.deleted`: the schedules go.
- `oih.execution.finished`: the schedule's running execution ended (overlap policies), so a
  buffered run may go.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import delete
from sqlmodel import Session, col, select

from oih.events.v1 import event_pb2, iam_pb2, orchestrator_pb2
from oih.events.v1 import flows_pb2 as flow_events
from oih_runtime import cron
from oih_runtime.bus import Consumer, PermanentError
from oih_runtime.clock import utcnow
from oih_runtime.names import is_name

from .logic import arm, touch
from .models import ScheduleRow, TickRow

log = logging.getLogger(__name__)

Event = event_pb2.Event


def _flow_id(name: str) -> str:
    if not is_name(name, "flows"):
        raise PermanentError(f"not a flow name: {name!r}")  # retrying cannot fix it
    return name.removeprefix("flows/")


def _schedule(session: Session, name: str, tenant: str) -> ScheduleRow | None:
    row = session.get(ScheduleRow, _flow_id(name))
    if row is not None and tenant and row.tenant != tenant:
        log.warning("event names a flow of another tenant; ignored", extra={"flow": name})
        return None
    return row


def flow_starting(session: Session, event: Event, payload: flow_events.FlowStarting) -> None:
    flow = payload.flow
    flow_id = _flow_id(flow.name)
    row = session.get(ScheduleRow, flow_id)
    if not flow.cron:
        if row is not None:
            _delete(session, row)
        return
    if cron.check(flow.cron) is not None:
        raise PermanentError(f"flows/{flow_id} has an unusable cron {flow.cron!r}")
    if row is None:
        row = ScheduleRow(flow_id=flow_id, tenant=flow.tenant, cron=flow.cron,
                          etag=uuid.uuid4().hex)
    elif row.tenant != flow.tenant:
        log.warning("flow.starting names a flow of another tenant; ignored",
                    extra={"flow": flow.name})
        return
    row.cron = flow.cron
    row.flow_active = False
    row.running_execution = ""
    arm(row, utcnow())
    touch(row)
    session.add(row)


def flow_started(session: Session, event: Event,
                 payload: orchestrator_pb2.FlowStateChanged) -> None:
    row = _schedule(session, payload.flow, payload.tenant)
    if row is None:
        return
    row.flow_active = True
    arm(row, utcnow())
    touch(row)
    session.add(row)


def _halt(session: Session, name: str, tenant: str) -> None:
    """No ticks until the flow is started again."""
    row = _schedule(session, name, tenant)
    if row is None:
        return
    row.flow_active = False
    arm(row, utcnow())
    touch(row)
    session.add(row)


def flow_stopping(session: Session, event: Event, payload: flow_events.FlowStopping) -> None:
    _halt(session, payload.flow.name, payload.flow.tenant)


def flow_stopped(session: Session, event: Event,
                 payload: orchestrator_pb2.FlowStateChanged) -> None:
    _halt(session, payload.flow, payload.tenant)


def flow_failed(session: Session, event: Event, payload: orchestrator_pb2.FlowFailed) -> None:
    _halt(session, payload.flow, payload.tenant)


def flow_deleted(session: Session, event: Event, payload: flow_events.FlowChanged) -> None:
    row = _schedule(session, payload.flow, payload.tenant)
    if row is not None:
        _delete(session, row)


def tenant_deleted(session: Session, event: Event, payload: iam_pb2.TenantChanged) -> None:
    for row in session.exec(select(ScheduleRow).where(
            col(ScheduleRow.tenant) == payload.tenant)).all():
        _delete(session, row)


def execution_finished(session: Session, event: Event,
                       payload: orchestrator_pb2.ExecutionFinished) -> None:
    flow_name = payload.execution.split("/executions/", 1)[0]
    row = _schedule(session, flow_name, payload.tenant)
    if row is not None and row.running_execution == payload.execution:
        row.running_execution = ""
        touch(row)
        session.add(row)


def _delete(session: Session, row: ScheduleRow) -> None:
    session.exec(delete(TickRow).where(
        col(TickRow.flow_id) == row.flow_id))
    session.delete(row)


HANDLERS: dict[str, tuple[Any, Any]] = {
    "oih.flow.starting": (flow_starting, flow_events.FlowStarting),
    "oih.flow.started": (flow_started, orchestrator_pb2.FlowStateChanged),
    "oih.flow.stopping": (flow_stopping, flow_events.FlowStopping),
    "oih.flow.stopped": (flow_stopped, orchestrator_pb2.FlowStateChanged),
    "oih.flow.failed": (flow_failed, orchestrator_pb2.FlowFailed),
    "oih.flow.deleted": (flow_deleted, flow_events.FlowChanged),
    "oih.iam.tenant.deleted": (tenant_deleted, iam_pb2.TenantChanged),
    "oih.execution.finished": (execution_finished, orchestrator_pb2.ExecutionFinished),
}


def register(consumer: Consumer) -> None:
    for event_type, (handler, payload_type) in HANDLERS.items():
        consumer.on(event_type, handler, payload_type)
