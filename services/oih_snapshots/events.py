"""Events the Snapshots service consumes, as `(session, event, payload)` handlers run by the
bus inside a transaction that also records the event id (a redelivered event is a no-op).

- `oih.flow.created` / `oih.flow.starting`: remember the flow's tenant (a worker's write names
  only its flow).
- `oih.execution.finished`: the execution's execution-scoped snapshots are removed.
- `oih.flow.deleted`, `oih.iam.tenant.deleted`: the flows' snapshots go.

Emitted (through the outbox, in the transaction of the change): `oih.snapshot.updated` and
`oih.snapshot.deleted` with an `oih.events.v1.SnapshotChanged` payload.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from oih.events.v1 import event_pb2, iam_pb2, orchestrator_pb2
from oih.events.v1 import flows_pb2 as flow_events
from oih_runtime import names
from oih_runtime.bus import Consumer, PermanentError

from . import logic
from .models import FlowRow

Event = event_pb2.Event


def _flow_id(name: str) -> str:
    if not names.is_name(name, "flows"):
        raise PermanentError(f"not a flow name: {name!r}")  # retrying cannot fix it
    return name.removeprefix("flows/")


def flow_created(session: Session, event: Event, payload: flow_events.FlowChanged) -> None:
    logic.remember_flow(session, _flow_id(payload.flow), payload.tenant)


def flow_starting(session: Session, event: Event, payload: flow_events.FlowStarting) -> None:
    logic.remember_flow(session, _flow_id(payload.flow.name), payload.flow.tenant)


def flow_deleted(session: Session, event: Event, payload: flow_events.FlowChanged) -> None:
    flow_id = _flow_id(payload.flow)
    tenant = logic.flow_tenant(session, flow_id)
    if tenant is None or tenant == payload.tenant:
        logic.forget_flow(session, flow_id)


def tenant_deleted(session: Session, event: Event, payload: iam_pb2.TenantChanged) -> None:
    flows = session.exec(select(FlowRow.flow_id).where(
        col(FlowRow.tenant) == payload.tenant)).all()
    for flow_id in flows:
        logic.forget_flow(session, flow_id)


def execution_finished(session: Session, event: Event,
                       payload: orchestrator_pb2.ExecutionFinished) -> None:
    flow_id, execution_id = names.parse("flows/{flow}/executions/{execution}",
                                        payload.execution, "execution")
    if logic.flow_tenant(session, flow_id) in (None, payload.tenant):
        logic.remove_execution(session, flow_id, execution_id)


HANDLERS: dict[str, tuple[Any, Any]] = {
    "oih.flow.created": (flow_created, flow_events.FlowChanged),
    "oih.flow.starting": (flow_starting, flow_events.FlowStarting),
    "oih.flow.deleted": (flow_deleted, flow_events.FlowChanged),
    "oih.iam.tenant.deleted": (tenant_deleted, iam_pb2.TenantChanged),
    "oih.execution.finished": (execution_finished, orchestrator_pb2.ExecutionFinished),
}


def register(consumer: Consumer) -> None:
    for event_type, (handler, payload_type) in HANDLERS.items():
        consumer.on(event_type, handler, payload_type)
