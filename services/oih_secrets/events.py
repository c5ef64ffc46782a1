"""Events the Secrets service emits and consumes. None carries a value.

Emitted through the transactional outbox, in the transaction of the change they announce:
`oih.secret.created|updated|deleted` (`oih.events.v1.SecretChanged`) and the audit record
`oih.secret.resolved` (`oih.events.v1.SecretResolved`: who resolved which secret for which flow).

Consumed: `oih.iam.tenant.deleted` deletes the tenant's secrets (each announced as deleted).
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from oih.events.v1 import event_pb2
from oih.events.v1 import iam_pb2 as iam_events
from oih.events.v1 import secrets_pb2 as secret_events
from oih_runtime import logs
from oih_runtime.bus import Consumer, Outbox
from oih_secrets.convert import name
from oih_secrets.models import SecretRow

SOURCE = "oih-secrets"
CREATED = "oih.secret.created"
UPDATED = "oih.secret.updated"
DELETED = "oih.secret.deleted"
RESOLVED = "oih.secret.resolved"

OUTBOX = Outbox(SOURCE)


def announce(session: Session, event_type: str, row: SecretRow, actor: str) -> None:
    """Add the event for `row`'s change to the caller's transaction."""
    fingerprint = "" if event_type == DELETED else row.fingerprint
    OUTBOX.add(session, event_type,
               secret_events.SecretChanged(secret=name(row.id), tenant=row.tenant, actor=actor,
                                           fingerprint=fingerprint),
               tenant=row.tenant, subject=name(row.id), request_id=logs.request_id.get())


def audit_resolve(session: Session, row: SecretRow, actor: str, flow: str) -> None:
    OUTBOX.add(session, RESOLVED,
               secret_events.SecretResolved(secret=name(row.id), tenant=row.tenant, actor=actor,
                                            flow=flow, fingerprint=row.fingerprint),
               tenant=row.tenant, subject=name(row.id), request_id=logs.request_id.get())


def on_tenant_deleted(session: Session, event: event_pb2.Event,
                      payload: iam_events.TenantChanged) -> None:
    for row in session.exec(select(SecretRow).where(col(SecretRow.tenant) == payload.tenant)):
        announce(session, DELETED, row, event.source)
        session.delete(row)


def register(consumer: Consumer) -> None:
    consumer.on("oih.iam.tenant.deleted", on_tenant_deleted, iam_events.TenantChanged)
