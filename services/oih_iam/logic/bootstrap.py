"""The first start (and every start after): built-in roles, the platform tenant, the first
administrator, the platform's own service account, and the revocations still in force."""

from __future__ import annotations

import uuid

from sqlmodel import Session, select

from oih.iam.v1 import iam_pb2
from oih_iam import permissions as catalogue
from oih_iam.credentials import hash_client_secret, new_client_secret
from oih_iam.logic.context import PLATFORM_TENANT, Context
from oih_iam.logic.sessions import remember
from oih_iam.models import RevocationRow, RoleRow, ServiceAccountRow, TenantRow, UserRow
from oih_runtime.db import transaction


def bootstrap(ctx: Context, internal_client_id: str = "", internal_secret: str = "") -> str | None:
    """Create built-in roles, the platform tenant and the first admin; returns the admin's
    generated password when one was generated (to be shown once), else None."""
    generated = None
    with transaction(ctx.engine) as session:
        for role in catalogue.BUILT_IN_ROLES:
            row = session.get(RoleRow, role.id) or RoleRow(id=role.id, display_name="")
            row.display_name = role.display_name
            row.description = role.description
            row.permissions = list(role.permissions)
            row.built_in = True
            session.add(row)
        if session.get(TenantRow, PLATFORM_TENANT) is None:
            session.add(TenantRow(id=PLATFORM_TENANT, display_name="platform"))
        has_admin = session.exec(
            select(UserRow).where(UserRow.username == ctx.settings.admin_username)
        ).first()
        if has_admin is None:
            password = ctx.settings.admin_password
            if not password:
                password = generated = new_client_secret()[5:29]
            session.add(UserRow(
                id=uuid.uuid4().hex, username=ctx.settings.admin_username,
                display_name="Platform administrator", tenant_id=PLATFORM_TENANT,
                roles=["roles/platform-admin"], password_hash=ctx.passwords.hash(password),
            ))
        if internal_client_id and internal_secret:
            _ensure_internal_account(session, internal_client_id, internal_secret)
        for revocation in session.exec(select(RevocationRow)):
            remember(ctx, revocation)
    return generated


def _ensure_internal_account(session: Session, client_id: str, secret: str) -> None:
    """The platform's own services call each other with this account's tokens."""
    row = session.exec(
        select(ServiceAccountRow).where(ServiceAccountRow.client_id == client_id)
    ).first() or ServiceAccountRow(
        id=client_id, client_id=client_id, display_name="OIH platform services",
        tenant_id=PLATFORM_TENANT, secret_hash="",
    )
    row.roles = ["roles/platform-admin"]
    # "secrets.resolve" is held by name, not only through "all": the Secrets service hands
    # values to service tokens that carry it explicitly, never to administrators as such.
    row.permissions = ["secrets.resolve"]
    row.secret_hash = hash_client_secret(secret)
    row.state = iam_pb2.STATE_ACTIVE
    session.add(row)
