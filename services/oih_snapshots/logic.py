"""Snapshots: applying workers' writes in emission order, and the API's reads and changes.

Ordering (the original's race, OIH #1330): every write carries the step's sequence number.
`apply_write` takes the stored row under a row lock and applies the write only when its
sequence is higher than the stored one, so a write the broker delivers late or twice never
overwrites a newer one, whichever replica of this service handles it. Deletions keep their
sequence as a tombstone for the same reason. An operator's Update or Delete takes a sequence of
at least the current time in microseconds (workers count from the same clock, see
oih_worker.process), so it wins over every write emitted before it.

Visibility follows the flow's tenant: a principal sees the snapshots of its own tenant's flows
(platform administrators all); another tenant's snapshot answers NOT_FOUND.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf import field_mask_pb2, json_format
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih.events.v1 import snapshots_pb2 as snapshot_events
from oih.snapshots.v1 import snapshots_pb2 as pb
from oih_runtime import filtering, logs, names, paging
from oih_runtime.bus import Outbox
from oih_runtime.clock import utcnow
from oih_runtime.db import transaction
from oih_runtime.errors import Aborted, InvalidArgument, NotFound
from oih_runtime.principal import Principal

from .models import FlowRow, SnapshotRow

SNAPSHOT = "flows/{flow}/steps/{step}/snapshot"
MAX_BYTES = 1024 * 1024
UPDATED = "oih.snapshot.updated"
DELETED = "oih.snapshot.deleted"
OUTBOX = Outbox("oih-snapshots")
#: How long tombstones of finished executions are kept (late writes arrive within seconds).
TOMBSTONE_RETENTION = timedelta(days=1)


@dataclass(frozen=True)
class Key:
    flow_id: str
    step_id: str
    execution_id: str = ""

    @property
    def name(self) -> str:
        return f"flows/{self.flow_id}/steps/{self.step_id}/snapshot"


def now_sequence() -> int:
    return time.time_ns() // 1000


def key_of(name: str, execution_id: str, field: str) -> Key:
    flow_id, step_id = names.parse(SNAPSHOT, name, field)
    if execution_id and not names.is_id(execution_id):
        raise InvalidArgument.field(field.rsplit(".", 1)[0] + ".execution_id"
                                    if "." in field else "execution_id", names.ID_RULE)
    return Key(flow_id, step_id, execution_id)


def check_size(data: dict[str, Any], field: str) -> None:
    if len(json.dumps(data)) > MAX_BYTES:
        raise InvalidArgument.field(field, "at most 1 MiB as JSON")


def _announce(session: Session, event_type: str, row: SnapshotRow) -> None:
    key = Key(row.flow_id, row.step_id, row.execution_id)
    OUTBOX.add(session, event_type,
               snapshot_events.SnapshotChanged(snapshot=key.name, execution_id=row.execution_id,
                                               tenant=row.tenant),
               tenant=row.tenant, subject=key.name, request_id=logs.request_id.get())


def _locked(session: Session, key: Key) -> SnapshotRow | None:
    return session.exec(select(SnapshotRow).where(
        col(SnapshotRow.flow_id) == key.flow_id, col(SnapshotRow.step_id) == key.step_id,
        col(SnapshotRow.execution_id) == key.execution_id).with_for_update()).first()


def _save(session: Session, row: SnapshotRow, data: dict[str, Any], sequence: int) -> None:
    row.data = data
    row.sequence = sequence
    row.deleted = False
    row.etag = uuid.uuid4().hex
    row.update_time = utcnow()
    session.add(row)
    session.flush()
    _announce(session, UPDATED, row)


def apply_write(session: Session, key: Key, tenant: str, data: dict[str, Any],
                sequence: int) -> bool:
    """Store a worker's write unless a newer one is stored; True when applied. Runs in the
    caller's transaction (the ingest consumer's, which acks after the commit). A concurrent
    first write of the same key fails the flush (primary key), and the retry sees the row."""
    row = _locked(session, key)
    if row is None:
        row = SnapshotRow(flow_id=key.flow_id, step_id=key.step_id,
                          execution_id=key.execution_id, tenant=tenant, etag="")
    elif row.sequence >= sequence:
        return False
    _save(session, row, data, sequence)
    return True


def remove_execution(session: Session, flow_id: str, execution_id: str) -> int:
    """The execution finished: its snapshots become tombstones (announced as deleted), and
    tombstones of executions that finished long ago go."""
    rows = session.exec(select(SnapshotRow).where(
        col(SnapshotRow.flow_id) == flow_id, col(SnapshotRow.execution_id) == execution_id,
        col(SnapshotRow.deleted).is_(False)).with_for_update()).all()
    for row in rows:
        _tombstone(session, row, row.sequence)
    session.exec(delete(SnapshotRow).where(
        col(SnapshotRow.deleted), col(SnapshotRow.execution_id) != "",
        col(SnapshotRow.update_time) < utcnow() - TOMBSTONE_RETENTION))
    return len(rows)


def forget_flow(session: Session, flow_id: str) -> None:
    for row in session.exec(select(SnapshotRow).where(col(SnapshotRow.flow_id) == flow_id,
                                                      col(SnapshotRow.deleted).is_(False))):
        _announce(session, DELETED, row)
    session.exec(delete(SnapshotRow).where(
        col(SnapshotRow.flow_id) == flow_id))
    flow = session.get(FlowRow, flow_id)
    if flow is not None:
        session.delete(flow)


def _tombstone(session: Session, row: SnapshotRow, sequence: int) -> None:
    row.data = {}
    row.deleted = True
    row.sequence = sequence
    row.etag = uuid.uuid4().hex
    row.update_time = utcnow()
    session.add(row)
    _announce(session, DELETED, row)


def _step_condition(op: str, value: str) -> Any:
    if op != "=" or not names.is_id(value):
        raise ValueError('use step_id="{step}"')
    return col(SnapshotRow.step_id) == value


def _execution_condition(op: str, value: str) -> Any:
    if op != "=" or (value and not names.is_id(value)):
        raise ValueError('use execution_id="{execution}" or execution_id=""')
    return col(SnapshotRow.execution_id) == value


FILTERS = {"step_id": _step_condition, "execution_id": _execution_condition}


class Snapshots:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _visible(self, session: Session, caller: Principal, key: Key) -> SnapshotRow:
        row = session.get(SnapshotRow, (key.flow_id, key.step_id, key.execution_id))
        if row is None or row.deleted or not caller.sees_tenant(row.tenant):
            raise NotFound("snapshot", key.name + (
                f" (execution {key.execution_id})" if key.execution_id else ""))
        return row

    def _flow_tenant(self, session: Session, caller: Principal, flow_id: str) -> str:
        """The tenant of a flow the caller may see (NOT_FOUND otherwise)."""
        flow = session.get(FlowRow, flow_id)
        if flow is None or not caller.sees_tenant(flow.tenant):
            raise NotFound("flow", f"flows/{flow_id}")
        return flow.tenant

    def get(self, caller: Principal, name: str, execution_id: str) -> SnapshotRow:
        key = key_of(name, execution_id, "name")
        with Session(self.engine) as session:
            return self._visible(session, caller, key)

    def list(self, caller: Principal, parent: str, page_size: int, page_token: str,
             filter_text: str) -> tuple[Sequence[SnapshotRow], str]:
        flow_id = names.resource_id(parent, "flows", "parent")
        conditions = filtering.conditions(filter_text, FILTERS)
        with Session(self.engine) as session:
            self._flow_tenant(session, caller, flow_id)  # NOT_FOUND unless a visible flow
        query = select(SnapshotRow).where(col(SnapshotRow.flow_id) == flow_id,
                                          col(SnapshotRow.deleted).is_(False), *conditions)
        if not caller.is_platform_admin:
            query = query.where(col(SnapshotRow.tenant) == caller.tenant)
        query = query.order_by(col(SnapshotRow.step_id), col(SnapshotRow.execution_id))
        with Session(self.engine) as session:
            return paging.page(session, query, page_size, page_token,
                               fingerprint=f"{flow_id}|{filter_text}")

    def update(self, caller: Principal, snapshot: pb.Snapshot,
               mask: field_mask_pb2.FieldMask, allow_missing: bool) -> SnapshotRow:
        key = key_of(snapshot.name, snapshot.execution_id, "snapshot.name")
        with transaction(self.engine, lock=True) as session:
            # Visibility before the fields: another tenant's snapshot (or flow) answers exactly
            # as a missing one, whatever the request.
            row = _locked(session, key)
            if row is not None and not caller.sees_tenant(row.tenant):
                raise NotFound("snapshot", key.name)  # flow ids are unique: another tenant's
            if row is None or row.deleted:
                if not allow_missing:
                    raise NotFound("snapshot", key.name)
                tenant = self._flow_tenant(session, caller, key.flow_id)
            for path in mask.paths:
                if path != "data":
                    raise InvalidArgument.field("update_mask", "only `data` can change")
            data = json_format.MessageToDict(snapshot.data)
            check_size(data, "snapshot.data")
            if row is None or row.deleted:
                row = row or SnapshotRow(flow_id=key.flow_id, step_id=key.step_id,
                                         execution_id=key.execution_id, tenant=tenant, etag="")
            elif snapshot.etag and snapshot.etag != row.etag:
                raise Aborted(f"{key.name} changed meanwhile (etag mismatch)",
                              reason="ETAG_MISMATCH")
            _save(session, row, data, max(row.sequence + 1, now_sequence()))
            return row

    def delete(self, caller: Principal, name: str, execution_id: str, etag: str) -> None:
        key = key_of(name, execution_id, "name")
        with transaction(self.engine, lock=True) as session:
            row = _locked(session, key)
            if row is None or row.deleted or not caller.sees_tenant(row.tenant):
                raise NotFound("snapshot", key.name)
            if etag and etag != row.etag:
                raise Aborted(f"{key.name} changed meanwhile (etag mismatch)",
                              reason="ETAG_MISMATCH")
            _tombstone(session, row, max(row.sequence + 1, now_sequence()))


def flow_tenant(session: Session, flow_id: str) -> str | None:
    flow = session.get(FlowRow, flow_id)
    return flow.tenant if flow is not None else None


def remember_flow(session: Session, flow_id: str, tenant: str) -> None:
    if session.get(FlowRow, flow_id) is None:
        session.add(FlowRow(flow_id=flow_id, tenant=tenant))

