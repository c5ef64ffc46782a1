"""Events the Component Repository emits and consumes.

Emitted through the transactional outbox, in the transaction of the change they announce:
`oih.component.created|updated|deleted` with an `oih.events.v1.ComponentChanged` payload.

Consumed (handlers run in the consumer's transaction, which also records the event id, so a
redelivered event is a no-op):
- `oih.iam.user.deleted` / `oih.iam.service_account.deleted`: the principal stops owning
  components (as in the original OIH); each changed component is announced as updated.
- `oih.iam.tenant.deleted`: the tenant's components are deleted (announced as deleted), and the
  tenant stops owning components of other tenants.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlmodel import Session, col, select

from oih.events.v1 import components_pb2 as component_events
from oih.events.v1 import event_pb2
from oih.events.v1 import iam_pb2 as iam_events
from oih_components.convert import name
from oih_components.models import ComponentRow, OwnerRow
from oih_runtime import logs
from oih_runtime.bus import Consumer, Outbox
from oih_runtime.clock import utcnow

SOURCE = "oih-components"
CREATED = "oih.component.created"
UPDATED = "oih.component.updated"
DELETED = "oih.component.deleted"

OUTBOX = Outbox(SOURCE)


def announce(session: Session, event_type: str, row: ComponentRow) -> None:
    """Add the event for `row`'s change to the caller's transaction."""
    OUTBOX.add(session, event_type,
               component_events.ComponentChanged(component=name(row.id), tenant=row.tenant),
               tenant=row.tenant, subject=name(row.id), request_id=logs.request_id.get())


def touch(row: ComponentRow) -> None:
    """Mark a change: a new etag makes concurrent writers with the old one fail with ABORTED."""
    row.etag = uuid.uuid4().hex
    row.update_time = utcnow()


def _remove_owner(session: Session, owner_id: str) -> None:
    owned = session.exec(
        select(ComponentRow).join(OwnerRow).where(OwnerRow.owner_id == owner_id)
    ).all()
    for row in owned:
        row.owners = [o for o in row.owners if o.owner_id != owner_id]
        touch(row)
        session.add(row)
        announce(session, UPDATED, row)


def on_user_deleted(session: Session, event: event_pb2.Event,
                    payload: iam_events.UserChanged) -> None:
    _remove_owner(session, payload.user)


def on_service_account_deleted(session: Session, event: event_pb2.Event,
                               payload: iam_events.ServiceAccountChanged) -> None:
    _remove_owner(session, payload.service_account)


def on_tenant_deleted(session: Session, event: event_pb2.Event,
                      payload: iam_events.TenantChanged) -> None:
    tenant = payload.tenant
    for row in session.exec(select(ComponentRow).where(col(ComponentRow.tenant) == tenant)):
        announce(session, DELETED, row)
        session.delete(row)
    session.flush()
    _remove_owner(session, tenant)


def register(consumer: Consumer) -> None:
    handlers: list[tuple[str, Any, Any]] = [
        ("oih.iam.user.deleted", on_user_deleted, iam_events.UserChanged),
        ("oih.iam.service_account.deleted", on_service_account_deleted,
         iam_events.ServiceAccountChanged),
        ("oih.iam.tenant.deleted", on_tenant_deleted, iam_events.TenantChanged),
    ]
    for event_type, handler, payload_type in handlers:
        consumer.on(event_type, handler, payload_type)
