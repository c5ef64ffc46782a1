"""Access checks: which tenant an object goes to, which objects a caller sees, and what a
caller may grant. Tenant isolation: a principal sees its own tenant's objects only, unless it
holds `all`; any other tenant's object answers NOT_FOUND, as if it did not exist. Grants: a
principal grants only permissions it holds itself (directly or through the roles it grants),
and only roles that are global or of the target's tenant."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from sqlmodel import Session, SQLModel

from oih_iam import permissions as catalogue
from oih_iam.logic.context import tenant_name
from oih_iam.models import RoleRow, ServiceAccountRow, TenantRow, UserRow
from oih_runtime.errors import InvalidArgument, NotFound, PermissionDenied
from oih_runtime.names import resource_id
from oih_runtime.principal import Principal

Row = TypeVar("Row", bound=SQLModel)


def effective(session: Session, roles: Iterable[str], direct: Iterable[str]) -> set[str]:
    """The permissions held directly plus those of the roles."""
    granted = set(direct)
    for role_name in roles:
        row = session.get(RoleRow, role_name.removeprefix("roles/"))
        if row is not None:
            granted.update(row.permissions)
    return granted


def visible_tenant(session: Session, caller: Principal, tenant: str, field: str) -> str:
    """The tenant id a new object goes to: the caller's own unless an admin names one."""
    if not tenant:
        return caller.tenant.removeprefix("tenants/")
    tenant_id = resource_id(tenant, "tenants", field)
    if not caller.sees_tenant(tenant) or session.get(TenantRow, tenant_id) is None:
        raise NotFound("tenant", tenant)
    return tenant_id


def check_grants(session: Session, caller: Principal, tenant_id: str, roles: Sequence[str],
                 direct: Sequence[str], prefix: str) -> None:
    """The caller may grant only what it holds, and only roles of the target's tenant."""
    unknown = catalogue.unknown(list(direct))
    if unknown:
        raise InvalidArgument.field(f"{prefix}.permissions",
                                    f"unknown permissions: {', '.join(unknown)}")
    for index, role_name in enumerate(roles):
        role_id = resource_id(role_name, "roles", f"{prefix}.roles[{index}]")
        role = session.get(RoleRow, role_id)
        if role is None or (role.tenant_id and role.tenant_id != tenant_id) or (
            role.tenant_id and not caller.sees_tenant(tenant_name(role.tenant_id))
        ):
            raise NotFound("role", role_name)
    wanted = effective(session, roles, direct)
    missing = sorted(p for p in wanted if not caller.has(p))
    if missing:
        raise PermissionDenied(
            f"cannot grant permissions the caller does not hold: {', '.join(missing)}",
            reason="GRANT_EXCEEDS_CALLER",
        )


def check_takeover(session: Session, caller: Principal, row: UserRow | ServiceAccountRow,
                   name: str) -> None:
    """Whoever sets a principal's credentials can act as it: only a caller holding every
    permission of that principal may (else a tenant admin could take over a more powerful
    account of its tenant)."""
    missing = sorted(p for p in effective(session, row.roles, row.permissions)
                     if not caller.has(p))
    if missing:
        raise PermissionDenied(
            f"cannot set the credentials of {name}: it holds permissions the caller does "
            f"not: {', '.join(missing)}", reason="GRANT_EXCEEDS_CALLER")


def get_scoped(session: Session, model: type[Row], name: str, collection: str, kind: str,
               caller: Principal, field: str = "name") -> Row:
    """A tenant-owned row the caller sees, else NOT_FOUND."""
    row = session.get(model, resource_id(name, collection, field))
    tenant_id = getattr(row, "tenant_id", None) if row is not None else None
    if row is None or not caller.sees_tenant(tenant_name(str(tenant_id))):
        raise NotFound(kind, name)
    return row
