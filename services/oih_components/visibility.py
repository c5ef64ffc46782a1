"""Who may see and who may change a component — the one place these rules live.

- See: platform administrators; everyone for ACCESS_PUBLIC; every principal of the
  component's tenant for ACCESS_TENANT; owners; and tenant administrators of the component's
  tenant (they manage everything in it, so they must be able to find it).
- Change: platform administrators, owners, and tenant administrators of the component's tenant.
- An owner is a principal whose subject is listed (`users/…`, `service-accounts/…`) or whose
  tenant is listed (`tenants/…`, an OWNER_TYPE_TENANT owner).
- A tenant administrator is a principal holding `tenant.account.update` (the permission that
  distinguishes the built-in tenant-admin role from integrators).

`visible` / `may_change` judge one component (a row or an `oih.components.v1.Component`, so
other services can use them on what GetComponent returned); `visible_clause` is the same
`visible` rule as a SQL condition for lists. tests/oih_components/test_visibility.py checks that
the two forms agree on every combination.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, exists, false, or_, true
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from oih_components.models import ACCESS_PUBLIC, ACCESS_TENANT, ComponentRow, OwnerRow
from oih_runtime.principal import Principal

TENANT_ADMIN_PERMISSION = "tenant.account.update"


def is_tenant_admin(principal: Principal) -> bool:
    # Only the permission held directly: `all` is covered by is_platform_admin.
    return TENANT_ADMIN_PERMISSION in principal.permissions


def _owner_ids(component: Any) -> set[str]:
    # Rows carry OwnerRow(owner_id=…), protos carry Owner(id=…).
    return {getattr(o, "owner_id", None) or o.id for o in component.owners}


def _identities(principal: Principal) -> set[str]:
    """The owner ids that make this principal an owner."""
    return {principal.subject, principal.tenant} - {""}


def owns(component: Any, principal: Principal) -> bool:
    return bool(_owner_ids(component) & _identities(principal))


def _admin_of_its_tenant(component: Any, principal: Principal) -> bool:
    return component.tenant == principal.tenant and is_tenant_admin(principal)


def visible(component: Any, principal: Principal) -> bool:
    """Whether `principal` may see `component` (a ComponentRow or a Component proto)."""
    return (
        principal.is_platform_admin
        or component.access == ACCESS_PUBLIC
        or (component.access == ACCESS_TENANT and component.tenant == principal.tenant)
        or _admin_of_its_tenant(component, principal)
        or owns(component, principal)
    )


def may_change(component: Any, principal: Principal) -> bool:
    """Whether `principal` may update or delete `component` (given it holds the RPC's permission)."""
    return (
        principal.is_platform_admin
        or _admin_of_its_tenant(component, principal)
        or owns(component, principal)
    )


def visible_clause(principal: Principal) -> ColumnElement[bool]:
    """`visible` as a condition on ComponentRow, for list queries."""
    if principal.is_platform_admin:
        return true()
    owned = exists().where(col(OwnerRow.component_id) == col(ComponentRow.id),
                           col(OwnerRow.owner_id).in_(sorted(_identities(principal))))
    own_tenant = col(ComponentRow.tenant) == principal.tenant
    return or_(
        col(ComponentRow.access) == ACCESS_PUBLIC,
        and_(col(ComponentRow.access) == ACCESS_TENANT, own_tenant),
        and_(own_tenant, true() if is_tenant_admin(principal) else false()),
        owned,
    )
