"""Rows → protos. Rows store a state as its `oih.iam.v1.State` number; read back here."""

from __future__ import annotations

from oih.iam.v1 import iam_pb2
from oih_iam.logic.context import tenant_name
from oih_iam.models import RoleRow, ServiceAccountRow, TenantRow, UserRow
from oih_runtime.clock import timestamp


def tenant(row: TenantRow) -> iam_pb2.Tenant:
    return iam_pb2.Tenant(
        name=f"tenants/{row.id}", display_name=row.display_name,
        state=iam_pb2.State.ValueType(row.state),
        create_time=timestamp(row.create_time), update_time=timestamp(row.update_time),
    )


def user(row: UserRow, effective: list[str]) -> iam_pb2.User:
    return iam_pb2.User(
        name=f"users/{row.id}", username=row.username, display_name=row.display_name,
        tenant=tenant_name(row.tenant_id), roles=row.roles, permissions=row.permissions,
        state=iam_pb2.State.ValueType(row.state), effective_permissions=effective,
        create_time=timestamp(row.create_time), update_time=timestamp(row.update_time),
    )


def role(row: RoleRow) -> iam_pb2.Role:
    return iam_pb2.Role(
        name=f"roles/{row.id}", display_name=row.display_name, description=row.description,
        tenant=tenant_name(row.tenant_id), permissions=row.permissions, built_in=row.built_in,
    )


def service_account(row: ServiceAccountRow, effective: list[str],
                    secret: str = "") -> iam_pb2.ServiceAccount:
    return iam_pb2.ServiceAccount(
        name=f"service-accounts/{row.id}", display_name=row.display_name,
        tenant=tenant_name(row.tenant_id), roles=row.roles, permissions=row.permissions,
        state=iam_pb2.State.ValueType(row.state), client_id=row.client_id,
        client_secret=secret,
        effective_permissions=effective, create_time=timestamp(row.create_time),
    )
