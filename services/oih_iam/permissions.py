"""The permission catalogue and the built-in roles.

Names follow the original OIH where one fits (`tenant.account.create`, `flows.write`,
`components.create`, `iam.tenant.create`, `all`). Restricted permissions belong to platform
administrators: no tenant role may hold them. `all` satisfies every rule; there is no other
wildcard, so a role's permission list says exactly what it allows.
"""

from __future__ import annotations

from dataclasses import dataclass

ALL = "all"


@dataclass(frozen=True)
class PermissionInfo:
    name: str
    description: str
    restricted: bool = False


CATALOGUE = [
    PermissionInfo(ALL, "Everything, in every tenant (platform administrators)", True),
    PermissionInfo("iam.tenant.create", "Create tenants", True),
    PermissionInfo("iam.tenant.update", "Change tenants", True),
    PermissionInfo("iam.tenant.delete", "Delete tenants and all their data", True),
    PermissionInfo("iam.key.create", "Rotate the token signing key", True),
    PermissionInfo("iam.token.introspect", "Introspect any access token", True),
    PermissionInfo("iam.token.delete", "Revoke other principals' tokens", True),
    PermissionInfo("secrets.resolve",
                   "Read secret values (platform services only; no REST method returns one)",
                   True),
    PermissionInfo("secrets.admin", "Rotate the Secrets service's master key", True),
    PermissionInfo("tenant.profile.read", "Read the own tenant"),
    PermissionInfo("tenant.account.read", "Read users and service accounts of the tenant"),
    PermissionInfo("tenant.account.create", "Create users and service accounts in the tenant"),
    PermissionInfo("tenant.account.update", "Change users and service accounts of the tenant"),
    PermissionInfo("tenant.account.delete", "Delete users and service accounts of the tenant"),
    PermissionInfo("tenant.roles.read", "Read roles"),
    PermissionInfo("tenant.roles.create", "Create tenant roles"),
    PermissionInfo("tenant.roles.update", "Change tenant roles"),
    PermissionInfo("tenant.roles.delete", "Delete tenant roles"),
    PermissionInfo("components.read", "Read components"),
    PermissionInfo("components.create", "Create components"),
    PermissionInfo("components.update", "Change owned components"),
    PermissionInfo("components.delete", "Delete owned components"),
    PermissionInfo("flows.read", "Read flows, their runtime and executions"),
    PermissionInfo("flows.write", "Create, change and delete flows"),
    PermissionInfo("flows.control", "Start and stop flows, handle dead letters"),
    PermissionInfo("flows.execute", "Run flows now with a payload"),
    PermissionInfo("schedules.read", "Read schedules"),
    PermissionInfo("schedules.write", "Pause, resume and run schedules"),
    PermissionInfo("snapshots.read", "Read step snapshots"),
    PermissionInfo("snapshots.write", "Change and delete step snapshots"),
    PermissionInfo("webhooks.execute", "Call webhooks of flows that require authentication"),
    PermissionInfo("secrets.read", "Read secrets' metadata (never their values)"),
    PermissionInfo("secrets.write", "Create, change, rotate and delete secrets"),
]
BY_NAME = {p.name: p for p in CATALOGUE}
RESTRICTED = frozenset(p.name for p in CATALOGUE if p.restricted)
COMMON = [p.name for p in CATALOGUE if not p.restricted]

_WORK = [
    "tenant.profile.read", "tenant.roles.read",
    "components.read", "components.create", "components.update", "components.delete",
    "flows.read", "flows.write", "flows.control", "flows.execute",
    "schedules.read", "schedules.write", "snapshots.read", "snapshots.write",
    "webhooks.execute", "secrets.read", "secrets.write",
]  # fmt: skip


@dataclass(frozen=True)
class BuiltInRole:
    id: str
    display_name: str
    description: str
    permissions: tuple[str, ...]


BUILT_IN_ROLES = [
    BuiltInRole("platform-admin", "Platform administrator", "Everything, everywhere", (ALL,)),
    BuiltInRole(
        "tenant-admin", "Tenant administrator",
        "Manages its tenant: users, service accounts, roles, components and flows",
        tuple(COMMON),
    ),
    BuiltInRole("integrator", "Integrator", "Builds and runs flows", tuple(_WORK)),
    BuiltInRole(
        "service-account", "Service account", "A machine client running flows",
        ("tenant.profile.read", "components.read", "flows.read", "flows.execute",
         "snapshots.read", "snapshots.write", "webhooks.execute"),
    ),
]  # fmt: skip


def unknown(permissions: list[str]) -> list[str]:
    return [p for p in permissions if p not in BY_NAME]
