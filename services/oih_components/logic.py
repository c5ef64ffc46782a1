"""The Component Repository's rules, free of gRPC: create, read, list, change, delete.

Errors, in the order they are decided: a malformed name or bad input → INVALID_ARGUMENT; a
component the caller may not see → NOT_FOUND (also other tenants' private components, so
their existence does not leak); one it sees but may not change → PERMISSION_DENIED; a stale
etag → ABORTED. Who sees and who changes is decided in `visibility` only.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

from google.protobuf import field_mask_pb2
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, exists, select

from oih.components.v1 import components_pb2 as pb
from oih_components import convert, rules, visibility
from oih_components.events import CREATED, DELETED, UPDATED, announce, touch
from oih_components.models import ComponentRow, OwnerRow
from oih_runtime import filtering, names, paging
from oih_runtime.db import transaction
from oih_runtime.errors import Aborted, InvalidArgument, NotFound, PermissionDenied
from oih_runtime.principal import Principal

#: Fields an update may change. Output-only ones in a mask are ignored (AIP-134).
UPDATABLE = frozenset({"display_name", "description", "version", "access", "owners",
                       "container_image", "python_entry_point", "triggers", "actions",
                       "resources"})
OWNER_TYPES = {"users/": pb.OWNER_TYPE_USER, "service-accounts/": pb.OWNER_TYPE_SERVICE_ACCOUNT}


def component_id(resource_name: str, field: str) -> str:
    """`components/abc` → `abc`; anything else is INVALID_ARGUMENT naming `field`."""
    return names.resource_id(resource_name, "components", field)


# --- list filters and order --------------------------------------------------------------------

def _access(op: str, value: str) -> Any:
    try:
        number = pb.Access.Value(value if value.startswith("ACCESS_") else f"ACCESS_{value}")
    except ValueError:
        raise ValueError("use PRIVATE, TENANT or PUBLIC") from None
    if op not in ("=", "!="):
        raise ValueError("only = and != apply")
    return filtering.compare(col(ComponentRow.access), op, number)


def _text(column: Any) -> filtering.Condition:
    return lambda op, value: filtering.compare(column, op, value)


def _owner(op: str, value: str) -> Any:
    if op != "=":
        raise ValueError("only = applies")
    return exists().where(col(OwnerRow.component_id) == col(ComponentRow.id),
                          col(OwnerRow.owner_id) == value)


FILTERS: dict[str, filtering.Condition] = {
    "access": _access,
    "display_name": _text(col(ComponentRow.display_name)),
    "tenant": _text(col(ComponentRow.tenant)),
    "owner": _owner,
}
ORDER = {"display_name": col(ComponentRow.display_name),
         "create_time": col(ComponentRow.create_time),
         "update_time": col(ComponentRow.update_time)}


class Components:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- create / read ---------------------------------------------------------------------

    def create(self, caller: Principal, requested: pb.Component) -> ComponentRow:
        component = pb.Component()
        component.CopyFrom(requested)
        if component.access == pb.ACCESS_UNSPECIFIED:
            component.access = pb.ACCESS_PRIVATE
        _add_owner(component, _caller_owner(caller))
        if component.access == pb.ACCESS_TENANT and caller.tenant:
            # The contract: a tenant component is owned by its tenant, so every principal of
            # the tenant (with components.update) may maintain it.
            _add_owner(component, pb.Owner(id=caller.tenant, type=pb.OWNER_TYPE_TENANT))
        rules.check(component, caller.tenant)
        row = ComponentRow(id=uuid.uuid4().hex, tenant=caller.tenant,
                           display_name=component.display_name, etag=uuid.uuid4().hex)
        convert.fill(row, component)
        with transaction(self.engine) as session:
            session.add(row)
            announce(session, CREATED, row)
        return row

    def get(self, caller: Principal, resource_name: str) -> ComponentRow:
        with Session(self.engine) as session:
            return _visible(session, caller, component_id(resource_name, "name"))

    def list(self, caller: Principal, page_size: int, page_token: str, filter_text: str,
             order_by: str) -> tuple[Sequence[ComponentRow], str]:
        query = (
            select(ComponentRow)
            .where(visibility.visible_clause(caller),
                   *filtering.conditions(filter_text, FILTERS))
            .order_by(*filtering.order_by(order_by, ORDER, [ORDER["create_time"]]),
                      col(ComponentRow.id))  # a total order, so pages neither skip nor repeat
        )
        fingerprint = hashlib.sha256(f"{filter_text}\n{order_by}".encode()).hexdigest()[:16]
        with Session(self.engine) as session:
            return paging.page(session, query, page_size, page_token, fingerprint)

    # --- change ----------------------------------------------------------------------------

    def update(self, caller: Principal, requested: pb.Component,
               mask: field_mask_pb2.FieldMask) -> ComponentRow:
        key = component_id(requested.name, "component.name")
        paths = _paths(requested, mask)
        with transaction(self.engine) as session:
            row = _changeable(session, caller, key, requested.etag)
            merged = convert.component(row)
            field_mask_pb2.FieldMask(paths=paths).MergeMessage(
                requested, merged, replace_message_field=True, replace_repeated_field=True)
            if merged.access == pb.ACCESS_UNSPECIFIED:
                merged.access = pb.ACCESS_PRIVATE
            rules.check(merged, row.tenant)
            convert.fill(row, merged)
            touch(row)
            session.add(row)
            announce(session, UPDATED, row)
        return row

    def delete(self, caller: Principal, resource_name: str, etag: str) -> None:
        key = component_id(resource_name, "name")
        with transaction(self.engine) as session:
            row = _changeable(session, caller, key, etag)
            announce(session, DELETED, row)
            session.delete(row)


# --- helpers ---------------------------------------------------------------------------------

def _caller_owner(caller: Principal) -> pb.Owner:
    for prefix, owner_type in OWNER_TYPES.items():
        if caller.subject.startswith(prefix):
            return pb.Owner(id=caller.subject, type=owner_type)
    raise PermissionDenied(f"{caller.subject!r} cannot own components", reason="NOT_AN_OWNER")


def _add_owner(component: pb.Component, owner: pb.Owner) -> None:
    if all(o.id != owner.id for o in component.owners):
        component.owners.append(owner)


def _visible(session: Session, caller: Principal, key: str) -> ComponentRow:
    row = session.get(ComponentRow, key)
    if row is None or not visibility.visible(row, caller):
        raise NotFound("component", convert.name(key))
    return row


def _changeable(session: Session, caller: Principal, key: str, etag: str) -> ComponentRow:
    # FOR UPDATE (PostgreSQL): a concurrent writer waits, then sees the new etag.
    row = session.exec(select(ComponentRow).where(ComponentRow.id == key).with_for_update()).first()
    if row is None or not visibility.visible(row, caller):
        raise NotFound("component", convert.name(key))
    if not visibility.may_change(row, caller):
        raise PermissionDenied("only owners, tenant administrators of the component's tenant "
                               "and platform administrators may change a component",
                               reason="NOT_AN_OWNER")
    if etag and etag != row.etag:
        raise Aborted("the component was changed meanwhile; read it again",
                      reason="ETAG_MISMATCH")
    return row


def _paths(requested: pb.Component, mask: field_mask_pb2.FieldMask) -> list[str]:
    """The mask's paths, or — for an empty mask — the updatable fields set in `requested`."""
    if not mask.paths:
        return [field.name for field, _ in requested.ListFields() if field.name in UPDATABLE]
    if not mask.IsValidForDescriptor(pb.Component.DESCRIPTOR):
        raise InvalidArgument.field("update_mask", "names a field Component does not have")
    return [p for p in mask.paths if p.split(".", 1)[0] in UPDATABLE]
