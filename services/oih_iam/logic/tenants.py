"""Tenants: created and changed by platform administrators; disabling or deleting one ends
its members' sessions at once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlmodel import Session, col, select

from oih.events.v1 import iam_pb2 as events
from oih.iam.v1 import iam_pb2
from oih_iam.logic.context import PLATFORM_TENANT, Context, mask, tenant_name, unique
from oih_iam.logic.sessions import revoke_subject
from oih_iam.models import RoleRow, ServiceAccountRow, TenantRow, UserRow
from oih_runtime import paging
from oih_runtime.clock import utcnow
from oih_runtime.db import transaction
from oih_runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from oih_runtime.names import resource_id
from oih_runtime.principal import Principal


class Tenants:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create(self, display_name: str) -> TenantRow:
        display_name = display_name.strip()
        if not display_name:
            raise InvalidArgument.field("tenant.display_name", "required field is missing")
        taken = AlreadyExists(f"a tenant named {display_name!r} exists")
        with unique(taken), transaction(self.ctx.engine) as session:
            if session.exec(select(TenantRow).where(TenantRow.display_name == display_name)).first():
                raise taken
            row = TenantRow(id=uuid.uuid4().hex, display_name=display_name)
            session.add(row)
            self.ctx.emit(session, "oih.iam.tenant.created",
                          events.TenantChanged(tenant=tenant_name(row.id)), tenant_id=row.id,
                          subject=tenant_name(row.id))
        return row

    def get(self, caller: Principal, name: str) -> TenantRow:
        with Session(self.ctx.engine) as session:
            row = session.get(TenantRow, resource_id(name, "tenants", "name"))
            if row is None or not caller.sees_tenant(name):
                raise NotFound("tenant", name)
            return row

    def list_page(self, caller: Principal, page_size: int,
                  page_token: str) -> tuple[Sequence[TenantRow], str]:
        query = select(TenantRow).order_by(col(TenantRow.create_time), col(TenantRow.id))
        if not caller.is_platform_admin:
            query = query.where(TenantRow.id == caller.tenant.removeprefix("tenants/"))
        with Session(self.ctx.engine) as session:
            return paging.page(session, query, page_size, page_token, "tenants")

    def update(self, name: str, paths: Sequence[str], display_name: str,
               state: iam_pb2.State.ValueType) -> TenantRow:
        chosen = mask(paths, [f for f, v in (("display_name", display_name),
                                             ("state", state)) if v],
                      {"display_name", "state"})
        with transaction(self.ctx.engine) as session:
            row = session.get(TenantRow, resource_id(name, "tenants", "tenant.name"))
            if row is None:
                raise NotFound("tenant", name)
            if "display_name" in chosen:
                if not display_name.strip():
                    raise InvalidArgument.field("tenant.display_name", "must not be empty")
                row.display_name = display_name.strip()
            if "state" in chosen:
                row.state = state or iam_pb2.STATE_ACTIVE
                if row.state == iam_pb2.STATE_DISABLED:
                    # Like disabling a user: its members' tokens are refused at once.
                    self._revoke_members(session, row.id)
            row.update_time = utcnow()
            session.add(row)
            self.ctx.emit(session, "oih.iam.tenant.updated",
                          events.TenantChanged(tenant=name), tenant_id=row.id, subject=name)
        return row

    def _revoke_members(self, session: Session, tenant_id: str) -> None:
        """Revoke the tokens of every user and service account of a tenant."""
        for user in session.exec(select(UserRow).where(UserRow.tenant_id == tenant_id)):
            revoke_subject(self.ctx, session, f"users/{user.id}")
        accounts = select(ServiceAccountRow).where(ServiceAccountRow.tenant_id == tenant_id)
        for account in session.exec(accounts):
            revoke_subject(self.ctx, session, f"service-accounts/{account.id}")

    def delete(self, name: str) -> None:
        tenant_id = resource_id(name, "tenants", "name")
        if tenant_id == PLATFORM_TENANT:
            raise FailedPrecondition("the platform tenant cannot be deleted",
                                     reason="PLATFORM_TENANT", subject=name)
        with transaction(self.ctx.engine) as session:
            row = session.get(TenantRow, tenant_id)
            if row is None:
                raise NotFound("tenant", name)
            self._revoke_members(session, tenant_id)
            for user in session.exec(select(UserRow).where(UserRow.tenant_id == tenant_id)):
                session.delete(user)
            accounts = select(ServiceAccountRow).where(ServiceAccountRow.tenant_id == tenant_id)
            for account in session.exec(accounts):
                session.delete(account)
            for role in session.exec(select(RoleRow).where(RoleRow.tenant_id == tenant_id)):
                session.delete(role)
            session.delete(row)
            # Other services remove the tenant's flows, components, schedules and snapshots.
            self.ctx.emit(session, "oih.iam.tenant.deleted", events.TenantChanged(tenant=name),
                          tenant_id=tenant_id, subject=name)
