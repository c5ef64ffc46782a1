"""The authenticated caller of the current RPC, as verified from its access token."""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from oih_runtime.errors import Unauthenticated

#: The permission of platform administrators; it satisfies every access rule.
ALL = "all"


@dataclass(frozen=True)
class Principal:
    """A verified caller: a user or a service account of one tenant."""

    subject: str  # users/{id} or service-accounts/{id}
    tenant: str  # tenants/{id}
    permissions: frozenset[str]
    typ: str = "user"  # "user" | "service"
    token_id: str = ""
    issued_at: int = 0
    expires_at: int = 0
    claims: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: The verified token itself, so a service can act on the caller's behalf downstream.
    token: str = field(default="", compare=False, repr=False)

    @property
    def is_platform_admin(self) -> bool:
        return ALL in self.permissions

    def has(self, permission: str) -> bool:
        return self.is_platform_admin or permission in self.permissions

    def holds_all(self, permissions: Iterable[str]) -> bool:
        return all(self.has(p) for p in permissions)

    def sees_tenant(self, tenant: str) -> bool:
        """Whether objects of `tenant` are visible to this principal (tenant isolation)."""
        return self.is_platform_admin or tenant == self.tenant

    @classmethod
    def from_claims(cls, claims: dict[str, Any], token: str = "") -> Principal:
        return cls(
            subject=str(claims["sub"]),
            tenant=str(claims.get("tenant", "")),
            permissions=frozenset(claims.get("permissions", [])),
            typ=str(claims.get("typ", "user")),
            token_id=str(claims.get("jti", "")),
            issued_at=int(claims.get("iat", 0)),
            expires_at=int(claims.get("exp", 0)),
            claims=claims,
            token=token,
        )


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None
)


def current() -> Principal:
    """The caller of the RPC being served. Raises UNAUTHENTICATED on a public RPC."""
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("this call needs an access token")
    return principal


def current_or_none() -> Principal | None:
    return _current.get()


def bind(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _current.set(principal)


def unbind(token: contextvars.Token[Principal | None]) -> None:
    _current.reset(token)
