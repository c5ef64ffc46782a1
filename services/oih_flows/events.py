"""Handlers of the events the Flow Repository consumes, as plain `(session, event, payload)`
functions: the bus runs each inside a transaction that also records the event id, so a
redelivered event is a no-op and a handler's state change commits with its own events.

Stale events are expected (at-least-once delivery, retries, a user stopping a flow while the
orchestrator is still starting it), so each handler moves a flow only from the states where
the event makes sense and ignores it otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlmodel import Session, col, select

from oih.events.v1 import event_pb2, iam_pb2, orchestrator_pb2
from oih_flows import lifecycle
from oih_flows.lifecycle import ACTIVE, FAILED, INACTIVE, STARTING, STOPPING
from oih_flows.models import FlowOwnerRow, FlowRow
from oih_runtime.bus import PermanentError
from oih_runtime.clock import utcnow
from oih_runtime.names import is_name

log = logging.getLogger(__name__)

Event = event_pb2.Event


def _flow(session: Session, name: str, tenant: str) -> FlowRow | None:
    if not is_name(name, "flows"):
        raise PermanentError(f"not a flow name: {name!r}")  # retrying cannot fix it
    row = session.get(FlowRow, name.removeprefix("flows/"))
    if row is None:
        log.info("event for a flow that no longer exists", extra={"flow": name})
        return None
    if tenant and tenant != row.tenant:
        log.warning("event names a flow of another tenant; ignored",
                    extra={"flow": name, "tenant": tenant})
        return None
    return row


def _ignored(event: Event, row: FlowRow) -> None:
    log.info("event does not apply to the flow's state; ignored",
             extra={"event_type": event.type, "flow": lifecycle.name(row), "state": row.state})


def flow_started(session: Session, event: Event,
                 payload: orchestrator_pb2.FlowStateChanged) -> None:
    """The orchestrator has every worker up: STARTING → ACTIVE."""
    row = _flow(session, payload.flow, payload.tenant)
    if row is None:
        return
    if row.state != STARTING:
        # E.g. stopped meanwhile (STOPPING: its own event follows) or timed out (FAILED: the
        # user starts or stops it again, which reconciles the runtime).
        _ignored(event, row)
        return
    lifecycle.set_state(row, ACTIVE)
    session.add(row)


def flow_stopped(session: Session, event: Event,
                 payload: orchestrator_pb2.FlowStateChanged) -> None:
    """The orchestrator removed everything: STOPPING → INACTIVE."""
    row = _flow(session, payload.flow, payload.tenant)
    if row is None:
        return
    if row.state != STOPPING:
        _ignored(event, row)
        return
    lifecycle.set_state(row, INACTIVE)
    session.add(row)


def flow_failed(session: Session, event: Event, payload: orchestrator_pb2.FlowFailed) -> None:
    """Starting or running failed: → FAILED with the reason (an INACTIVE flow stays so)."""
    if event.source == lifecycle.SOURCE:
        # Our own announcement (the sweeper's): the flow became FAILED in the transaction
        # that wrote it. Arriving late (the broker was down), it would fail the next start.
        return
    row = _flow(session, payload.flow, payload.tenant)
    if row is None:
        return
    reason = payload.reason or "the orchestrator reported a failure without a reason"
    if row.state == INACTIVE or (row.state == FAILED and row.state_reason == reason):
        _ignored(event, row)  # nothing runs any more, or we already know (our own event)
        return
    lifecycle.set_state(row, FAILED, reason)
    session.add(row)


def _owner_deleted(session: Session, owner: str, tenant: str) -> None:
    """Remove `owner` (a user or a service account) from every owner list; stop the flows left
    without any owner."""
    query = (select(FlowRow).join(FlowOwnerRow)
             .where(col(FlowOwnerRow.owner) == owner))
    if tenant:
        query = query.where(col(FlowRow.tenant) == tenant)
    for row in session.exec(query).unique().all():
        row.owners = [o for o in row.owners if o.owner != owner]
        row.update_time = utcnow()
        session.add(row)
        session.flush()
        lifecycle.emit_changed(session, row, "updated")
        # Orphan clean-up as in the original: nobody answers for the flow any more, so it
        # must not keep running. It stays in the tenant, where a colleague can take it over.
        if not row.owners and row.state not in (INACTIVE, STOPPING):
            lifecycle.stop(session, row, stopped_by="")


def user_deleted(session: Session, event: Event, payload: iam_pb2.UserChanged) -> None:
    _owner_deleted(session, payload.user, payload.tenant)


def service_account_deleted(session: Session, event: Event,
                            payload: iam_pb2.ServiceAccountChanged) -> None:
    _owner_deleted(session, payload.service_account, payload.tenant)


def tenant_deleted(session: Session, event: Event, payload: iam_pb2.TenantChanged) -> None:
    """Remove the tenant's flows, stopping the running ones first."""
    if not is_name(payload.tenant, "tenants"):
        raise PermanentError(f"not a tenant name: {payload.tenant!r}")
    for row in session.exec(select(FlowRow).where(col(FlowRow.tenant) == payload.tenant)).all():
        if row.state != INACTIVE:
            lifecycle.stop(session, row, stopped_by="")
        lifecycle.emit_changed(session, row, "deleted")
        session.delete(row)
    session.flush()


Handler = Callable[[Session, Event, Any], None]

#: Event type → (handler, payload type), wired to the bus consumer by `server.build`.
HANDLERS: dict[str, tuple[Handler, type[Any]]] = {
    "oih.flow.started": (flow_started, orchestrator_pb2.FlowStateChanged),
    "oih.flow.stopped": (flow_stopped, orchestrator_pb2.FlowStateChanged),
    "oih.flow.failed": (flow_failed, orchestrator_pb2.FlowFailed),
    "oih.iam.user.deleted": (user_deleted, iam_pb2.UserChanged),
    "oih.iam.service_account.deleted": (service_account_deleted, iam_pb2.ServiceAccountChanged),
    "oih.iam.tenant.deleted": (tenant_deleted, iam_pb2.TenantChanged),
}
