"""Principals: users and service accounts. They share grants, states and the rule that a
change taking a permission away (or disabling) ends the principal's sessions at once: tokens
carry the old permissions until they expire otherwise."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TypeAlias

from sqlmodel import Session, col, select

from oih.events.v1 import iam_pb2 as events
from oih.iam.v1 import iam_pb2
from oih_iam.credentials import hash_client_secret, new_client_secret
from oih_iam.logic.access import (
    check_grants,
    check_takeover,
    effective,
    get_scoped,
    visible_tenant,
)
from oih_iam.logic.context import Context, mask, tenant_name, unique
from oih_iam.logic.sessions import revoke_subject
from oih_iam.models import ServiceAccountRow, UserRow
from oih_runtime import paging
from oih_runtime.clock import utcnow
from oih_runtime.db import transaction
from oih_runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from oih_runtime.names import resource_id
from oih_runtime.principal import Principal

State: TypeAlias = iam_pb2.State.ValueType
MIN_PASSWORD_LENGTH = 12
PRINCIPAL_FIELDS = {"display_name", "roles", "permissions", "state"}


def update_principal(ctx: Context, session: Session, caller: Principal,
                     row: UserRow | ServiceAccountRow, name: str, chosen: Sequence[str],
                     field: str, *, display_name: str, roles: list[str],
                     permissions: list[str], state: State) -> None:
    """The masked fields users and service accounts share: grants are checked; taking a
    permission away or disabling revokes the principal's tokens."""
    if "roles" in chosen or "permissions" in chosen:
        new_roles = roles if "roles" in chosen else row.roles
        new_direct = permissions if "permissions" in chosen else row.permissions
        check_grants(session, caller, row.tenant_id, new_roles, new_direct, field)
        before = effective(session, row.roles, row.permissions)
        row.roles, row.permissions = list(new_roles), list(new_direct)
        if before - effective(session, row.roles, row.permissions):
            revoke_subject(ctx, session, name)
    if "display_name" in chosen:
        row.display_name = display_name
    if "state" in chosen:
        row.state = state or iam_pb2.STATE_ACTIVE
        if row.state == iam_pb2.STATE_DISABLED:
            revoke_subject(ctx, session, name)


def revoke_holders(ctx: Context, session: Session, role: str, tenant_id: str) -> None:
    """A tenant role lost permissions (or is gone): its holders' tokens carry too much now.
    Only the role's own tenant can hold it."""
    for user in session.exec(select(UserRow).where(UserRow.tenant_id == tenant_id)):
        if role in user.roles:
            revoke_subject(ctx, session, f"users/{user.id}")
    accounts = select(ServiceAccountRow).where(ServiceAccountRow.tenant_id == tenant_id)
    for account in session.exec(accounts):
        if role in account.roles:
            revoke_subject(ctx, session, f"service-accounts/{account.id}")


def remove_from_holders(ctx: Context, session: Session, role: str, tenant_id: str) -> None:
    """A deleted role leaves its holders (else every later change of their grants would
    name a role that does not exist), and their tokens, which carry its permissions, are
    revoked."""
    for user in session.exec(select(UserRow).where(UserRow.tenant_id == tenant_id)):
        if role in user.roles:
            user.roles = [r for r in user.roles if r != role]
            user.update_time = utcnow()
            session.add(user)
            revoke_subject(ctx, session, f"users/{user.id}")
            emit_user(ctx, session, "oih.iam.user.updated", user)
    accounts = select(ServiceAccountRow).where(ServiceAccountRow.tenant_id == tenant_id)
    for account in session.exec(accounts):
        if role in account.roles:
            account.roles = [r for r in account.roles if r != role]
            account.update_time = utcnow()
            session.add(account)
            revoke_subject(ctx, session, f"service-accounts/{account.id}")
            emit_account(ctx, session, "oih.iam.service_account.updated", account)


def emit_user(ctx: Context, session: Session, event_type: str, row: UserRow) -> None:
    name = f"users/{row.id}"
    ctx.emit(session, event_type, events.UserChanged(user=name, tenant=tenant_name(row.tenant_id)),
             tenant_id=row.tenant_id, subject=name)


def emit_account(ctx: Context, session: Session, event_type: str, row: ServiceAccountRow) -> None:
    name = f"service-accounts/{row.id}"
    ctx.emit(session, event_type, events.ServiceAccountChanged(
        service_account=name, tenant=tenant_name(row.tenant_id)),
        tenant_id=row.tenant_id, subject=name)


def _check_password(password: str, field: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidArgument.field(field, f"must be at least {MIN_PASSWORD_LENGTH} characters")


def _set_fields(display_name: str, roles: list[str], permissions: list[str],
                state: State) -> list[str]:
    return [f for f, v in (("display_name", display_name), ("roles", roles),
                           ("permissions", permissions), ("state", state)) if v]


class Users:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create(self, caller: Principal, *, username: str, display_name: str, tenant: str,
               roles: list[str], permissions: list[str], state: State,
               password: str) -> UserRow:
        username = username.strip().lower()
        if "@" not in username or len(username) > 254 or " " in username:
            raise InvalidArgument.field("user.username", "must be an email address")
        _check_password(password, "password")
        password_hash = self.ctx.passwords.hash(password)  # slow: outside the write transaction
        taken = AlreadyExists(f"the username {username!r} is taken", reason="USERNAME_TAKEN")
        with unique(taken), transaction(self.ctx.engine) as session:
            tenant_id = visible_tenant(session, caller, tenant, "user.tenant")
            check_grants(session, caller, tenant_id, roles, permissions, "user")
            if session.exec(select(UserRow).where(UserRow.username == username)).first():
                raise taken
            row = UserRow(
                id=uuid.uuid4().hex, username=username, display_name=display_name,
                tenant_id=tenant_id, roles=list(roles), permissions=list(permissions),
                state=state or iam_pb2.STATE_ACTIVE, password_hash=password_hash,
            )
            session.add(row)
            emit_user(self.ctx, session, "oih.iam.user.created", row)
        return row

    def get(self, caller: Principal, name: str) -> UserRow:
        with Session(self.ctx.engine) as session:
            return get_scoped(session, UserRow, name, "users", "user", caller)

    def list_page(self, caller: Principal, page_size: int, page_token: str,
                  tenant: str) -> tuple[Sequence[UserRow], str]:
        query = select(UserRow).order_by(col(UserRow.create_time), col(UserRow.id))
        if not caller.is_platform_admin:
            query = query.where(UserRow.tenant_id == caller.tenant.removeprefix("tenants/"))
        elif tenant:
            query = query.where(UserRow.tenant_id == resource_id(tenant, "tenants", "tenant"))
        with Session(self.ctx.engine) as session:
            return paging.page(session, query, page_size, page_token, f"users:{tenant}")

    def update(self, caller: Principal, name: str, paths: Sequence[str], *,
               display_name: str, roles: list[str], permissions: list[str], state: State,
               password: str) -> UserRow:
        chosen = mask(paths, _set_fields(display_name, roles, permissions, state),
                      PRINCIPAL_FIELDS)
        password_hash = ""
        if password:
            _check_password(password, "password")
            password_hash = self.ctx.passwords.hash(password)  # slow: outside the transaction
        with transaction(self.ctx.engine) as session:
            row = get_scoped(session, UserRow, name, "users", "user", caller, "user.name")
            update_principal(self.ctx, session, caller, row, name, chosen, "user",
                             display_name=display_name, roles=roles,
                             permissions=permissions, state=state)
            if password_hash:
                check_takeover(session, caller, row, name)
                row.password_hash = password_hash
                row.failed_logins, row.locked_until = 0, None
                # A new password (after a leak, say) ends the sessions of the old one.
                revoke_subject(self.ctx, session, name)
            row.update_time = utcnow()
            session.add(row)
            disabled = "state" in chosen and row.state == iam_pb2.STATE_DISABLED
            emit_user(self.ctx, session, "oih.iam.user.disabled" if disabled
                      else "oih.iam.user.updated", row)
        return row

    def delete(self, caller: Principal, name: str) -> None:
        if name == caller.subject:
            raise FailedPrecondition("a user cannot delete itself", reason="SELF_DELETE",
                                     subject=name)
        with transaction(self.ctx.engine) as session:
            row = get_scoped(session, UserRow, name, "users", "user", caller)
            revoke_subject(self.ctx, session, name)
            session.delete(row)
            emit_user(self.ctx, session, "oih.iam.user.deleted", row)


class ServiceAccounts:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create(self, caller: Principal, *, display_name: str, tenant: str,
               roles: list[str], permissions: list[str],
               state: State) -> tuple[ServiceAccountRow, str]:
        if not display_name.strip():
            raise InvalidArgument.field("service_account.display_name",
                                        "required field is missing")
        secret = new_client_secret()
        with transaction(self.ctx.engine) as session:
            tenant_id = visible_tenant(session, caller, tenant, "service_account.tenant")
            check_grants(session, caller, tenant_id, roles, permissions, "service_account")
            account_id = uuid.uuid4().hex
            row = ServiceAccountRow(
                id=account_id, client_id=account_id, display_name=display_name.strip(),
                tenant_id=tenant_id, roles=list(roles), permissions=list(permissions),
                state=state or iam_pb2.STATE_ACTIVE, secret_hash=hash_client_secret(secret),
            )
            session.add(row)
            emit_account(self.ctx, session, "oih.iam.service_account.created", row)
        return row, secret

    def get(self, caller: Principal, name: str) -> ServiceAccountRow:
        with Session(self.ctx.engine) as session:
            return get_scoped(session, ServiceAccountRow, name, "service-accounts",
                              "service_account", caller)

    def list_page(self, caller: Principal, page_size: int,
                  page_token: str) -> tuple[Sequence[ServiceAccountRow], str]:
        query = select(ServiceAccountRow).order_by(col(ServiceAccountRow.create_time),
                                                   col(ServiceAccountRow.id))
        if not caller.is_platform_admin:
            own = caller.tenant.removeprefix("tenants/")
            query = query.where(ServiceAccountRow.tenant_id == own)
        with Session(self.ctx.engine) as session:
            return paging.page(session, query, page_size, page_token, "service-accounts")

    def update(self, caller: Principal, name: str, paths: Sequence[str], *,
               display_name: str, roles: list[str], permissions: list[str],
               state: State) -> ServiceAccountRow:
        chosen = mask(paths, _set_fields(display_name, roles, permissions, state),
                      PRINCIPAL_FIELDS)
        with transaction(self.ctx.engine) as session:
            row = get_scoped(session, ServiceAccountRow, name, "service-accounts",
                             "service_account", caller, "service_account.name")
            update_principal(self.ctx, session, caller, row, name, chosen, "service_account",
                             display_name=display_name, roles=roles,
                             permissions=permissions, state=state)
            row.update_time = utcnow()
            session.add(row)
            emit_account(self.ctx, session, "oih.iam.service_account.updated", row)
        return row

    def delete(self, caller: Principal, name: str) -> None:
        with transaction(self.ctx.engine) as session:
            row = get_scoped(session, ServiceAccountRow, name, "service-accounts",
                             "service_account", caller)
            revoke_subject(self.ctx, session, name)
            session.delete(row)
            emit_account(self.ctx, session, "oih.iam.service_account.deleted", row)

    def reset_secret(self, caller: Principal, name: str) -> tuple[ServiceAccountRow, str]:
        secret = new_client_secret()
        with transaction(self.ctx.engine) as session:
            row = get_scoped(session, ServiceAccountRow, name, "service-accounts",
                             "service_account", caller)
            check_takeover(session, caller, row, name)
            row.secret_hash = hash_client_secret(secret)
            row.update_time = utcnow()
            session.add(row)
            revoke_subject(self.ctx, session, name)
        return row, secret
