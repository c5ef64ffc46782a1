"""The flow state machine and the events it owes, shared by the API, the event handlers and
the sweeper. Every function here works inside the caller's transaction: the state change and
its outbox event commit together or not at all.

    INACTIVE ─:start→ STARTING ─oih.flow.started→ ACTIVE ─:stop→ STOPPING ─oih.flow.stopped→ INACTIVE
    any state ─:stop→ STOPPING (INACTIVE stays INACTIVE)
    STARTING / STOPPING for longer than the transition timeout → FAILED (the sweeper)
    STARTING / ACTIVE / STOPPING / FAILED ─oih.flow.failed→ FAILED (reason kept)
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from oih.events.v1 import flows_pb2 as flow_events
from oih.events.v1 import orchestrator_pb2
from oih.flows.v1 import flows_pb2
from oih_flows import convert
from oih_flows.models import FlowRow
from oih_runtime import logs
from oih_runtime.bus import Outbox
from oih_runtime.clock import utcnow

SOURCE = "oih-flows"
OUTBOX = Outbox(SOURCE)

INACTIVE = flows_pb2.STATE_INACTIVE
STARTING = flows_pb2.STATE_STARTING
ACTIVE = flows_pb2.STATE_ACTIVE
STOPPING = flows_pb2.STATE_STOPPING
FAILED = flows_pb2.STATE_FAILED
#: States in which the definition may change and the flow may be deleted: nothing runs it.
AT_REST = (INACTIVE, FAILED)
#: States the orchestrator must confirm; the sweeper fails flows stuck in them.
TRANSITIONS = (STARTING, STOPPING)


def name(row: FlowRow) -> str:
    return f"flows/{row.id}"


def set_state(row: FlowRow, state: int, reason: str = "", now: datetime | None = None) -> None:
    now = now or utcnow()
    row.state = state
    row.state_reason = reason if state == FAILED else ""
    row.state_time = now
    row.update_time = now
    if state == INACTIVE:
        row.running_version = 0


def _emit(session: Session, event_type: str, row: FlowRow, payload: object) -> None:
    OUTBOX.add(session, event_type, payload, tenant=row.tenant,  # type: ignore[arg-type]
               subject=name(row), request_id=logs.request_id.get())


def emit_changed(session: Session, row: FlowRow, change: str) -> None:
    """`oih.flow.created|updated|deleted`."""
    _emit(session, f"oih.flow.{change}", row,
          flow_events.FlowChanged(flow=name(row), tenant=row.tenant))


def start(session: Session, row: FlowRow, started_by: str) -> None:
    set_state(row, STARTING)
    row.started_by = started_by
    row.running_version = row.version
    session.add(row)
    session.flush()  # the new etag is assigned on flush; the payload must carry it
    _emit(session, "oih.flow.starting", row,
          flow_events.FlowStarting(flow=convert.flow(row), started_by=started_by))


def stop(session: Session, row: FlowRow, stopped_by: str) -> None:
    """Ask the runtime to remove the flow. An empty `stopped_by` means the platform did."""
    set_state(row, STOPPING)
    session.add(row)
    session.flush()
    _emit(session, "oih.flow.stopping", row,
          flow_events.FlowStopping(flow=convert.flow(row), stopped_by=stopped_by))


def fail(session: Session, row: FlowRow, reason: str, now: datetime | None = None) -> None:
    """FAILED by this service (a timed-out transition): announced as `oih.flow.failed`, so
    the orchestrator removes what it had created and the scheduler and webhooks, which armed
    themselves on `oih.flow.starting`, disarm."""
    set_state(row, FAILED, reason, now)
    session.add(row)
    _emit(session, "oih.flow.failed", row,
          orchestrator_pb2.FlowFailed(flow=name(row), reason=reason, tenant=row.tenant))
