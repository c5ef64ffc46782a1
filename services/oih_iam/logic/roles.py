"""Roles: the built-in (global) ones and each tenant's own. A tenant role never holds a
restricted permission; a role losing permissions ends its holders' sessions."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlmodel import Session, col, or_, select

from oih_iam import permissions as catalogue
from oih_iam.logic.access import check_grants
from oih_iam.logic.context import Context, mask, tenant_name
from oih_iam.logic.principals import remove_from_holders, revoke_holders
from oih_iam.models import RoleRow
from oih_runtime import paging
from oih_runtime.db import transaction
from oih_runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from oih_runtime.names import resource_id
from oih_runtime.principal import Principal


def _refuse_restricted(permissions: Sequence[str]) -> None:
    restricted = sorted(set(permissions) & catalogue.RESTRICTED)
    if restricted:
        raise InvalidArgument.field("role.permissions",
                                    f"tenant roles cannot hold {', '.join(restricted)}")


class Roles:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create(self, caller: Principal, display_name: str, description: str,
               permissions: list[str]) -> RoleRow:
        tenant_id = caller.tenant.removeprefix("tenants/")
        _refuse_restricted(permissions)
        with transaction(self.ctx.engine) as session:
            check_grants(session, caller, tenant_id, [], permissions, "role")
            duplicate = select(RoleRow).where(RoleRow.tenant_id == tenant_id,
                                              RoleRow.display_name == display_name)
            if session.exec(duplicate).first():
                raise AlreadyExists(f"a role named {display_name!r} exists")
            row = RoleRow(id=uuid.uuid4().hex, display_name=display_name,
                          description=description, tenant_id=tenant_id,
                          permissions=list(permissions))
            session.add(row)
        return row

    def _visible(self, session: Session, caller: Principal, name: str,
                 field: str = "name") -> RoleRow:
        row = session.get(RoleRow, resource_id(name, "roles", field))
        if row is None or (row.tenant_id and not caller.sees_tenant(tenant_name(row.tenant_id))):
            raise NotFound("role", name)
        return row

    def get(self, caller: Principal, name: str) -> RoleRow:
        with Session(self.ctx.engine) as session:
            return self._visible(session, caller, name)

    def list_page(self, caller: Principal, page_size: int,
                  page_token: str) -> tuple[Sequence[RoleRow], str]:
        query = select(RoleRow).order_by(col(RoleRow.built_in).desc(), col(RoleRow.id))
        if not caller.is_platform_admin:
            own = caller.tenant.removeprefix("tenants/")
            query = query.where(or_(RoleRow.tenant_id == "", RoleRow.tenant_id == own))
        with Session(self.ctx.engine) as session:
            return paging.page(session, query, page_size, page_token, "roles")

    def _mutable(self, session: Session, caller: Principal, name: str, field: str) -> RoleRow:
        row = self._visible(session, caller, name, field)
        if row.built_in:
            raise FailedPrecondition("built-in roles cannot be changed", reason="BUILT_IN_ROLE",
                                     subject=name)
        return row

    def update(self, caller: Principal, name: str, paths: Sequence[str], *,
               display_name: str, description: str, permissions: list[str]) -> RoleRow:
        set_fields = [f for f, v in (("display_name", display_name),
                                     ("description", description),
                                     ("permissions", permissions)) if v]
        chosen = mask(paths, set_fields, {"display_name", "description", "permissions"})
        with transaction(self.ctx.engine) as session:
            row = self._mutable(session, caller, name, "role.name")
            before = set(row.permissions)
            if "permissions" in chosen:
                _refuse_restricted(permissions)
                check_grants(session, caller, row.tenant_id, [], permissions, "role")
                row.permissions = list(permissions)
                if before - set(row.permissions):
                    revoke_holders(self.ctx, session, name, row.tenant_id)
            if "display_name" in chosen:
                row.display_name = display_name
            if "description" in chosen:
                row.description = description
            session.add(row)
        return row

    def delete(self, caller: Principal, name: str) -> None:
        with transaction(self.ctx.engine) as session:
            row = self._mutable(session, caller, name, "name")
            session.delete(row)
            remove_from_holders(self.ctx, session, name, row.tenant_id)
