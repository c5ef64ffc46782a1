"""IAM's tables. Lists (roles, permissions) are stored as JSON arrays."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, Index, text
from sqlmodel import Field, SQLModel

from oih.iam.v1 import iam_pb2
from oih_runtime.clock import utcnow

# Each list's order has an index (within the caller's tenant and over all), so a page is a range
# of an index, never a sort of the table (tests/oih_runtime/test_query_plans.py).


class TenantRow(SQLModel, table=True):
    __tablename__ = "iam_tenant"
    __table_args__ = (Index("ix_iam_tenant_page", "create_time", "id"),)
    id: str = Field(primary_key=True)
    display_name: str = Field(unique=True)
    state: int = iam_pb2.STATE_ACTIVE  # an oih.iam.v1.State number
    create_time: datetime = Field(default_factory=utcnow)
    update_time: datetime = Field(default_factory=utcnow)


class UserRow(SQLModel, table=True):
    __tablename__ = "iam_user"
    __table_args__ = (Index("ix_iam_user_tenant_page", "tenant_id", "create_time", "id"),
                      Index("ix_iam_user_page", "create_time", "id"))
    id: str = Field(primary_key=True)
    username: str = Field(unique=True, index=True)
    display_name: str = ""
    tenant_id: str = Field(index=True)
    roles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    permissions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    state: int = iam_pb2.STATE_ACTIVE  # an oih.iam.v1.State number
    password_hash: str
    failed_logins: int = 0
    locked_until: datetime | None = None
    create_time: datetime = Field(default_factory=utcnow)
    update_time: datetime = Field(default_factory=utcnow)


class UnknownLoginRow(SQLModel, table=True):
    """Failed logins of a username no user has: counted and locked exactly like a user's
    (`UserRow.failed_logins`, `locked_until`), so the answers do not tell which usernames exist.
    Rows whose lock ran out longer ago than the longest lock are deleted as new ones come."""

    __tablename__ = "iam_unknown_login"
    username: str = Field(primary_key=True)
    failed_logins: int = 0
    locked_until: datetime | None = None
    update_time: datetime = Field(default_factory=utcnow, index=True)


class RoleRow(SQLModel, table=True):
    __tablename__ = "iam_role"
    __table_args__ = (Index("ix_iam_role_page", text("built_in DESC"), "id"),)
    id: str = Field(primary_key=True)
    display_name: str
    description: str = ""
    tenant_id: str = Field(default="", index=True)  # "" for global built-in roles
    permissions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    built_in: bool = False


class ServiceAccountRow(SQLModel, table=True):
    __tablename__ = "iam_service_account"
    __table_args__ = (
        Index("ix_iam_service_account_tenant_page", "tenant_id", "create_time", "id"),
        Index("ix_iam_service_account_page", "create_time", "id"))
    id: str = Field(primary_key=True)
    client_id: str = Field(unique=True, index=True)
    display_name: str
    tenant_id: str = Field(index=True)
    roles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    permissions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    state: int = iam_pb2.STATE_ACTIVE  # an oih.iam.v1.State number
    secret_hash: str
    create_time: datetime = Field(default_factory=utcnow)
    update_time: datetime = Field(default_factory=utcnow)


class SigningKeyRow(SQLModel, table=True):
    __tablename__ = "iam_signing_key"
    kid: str = Field(primary_key=True)
    #: The PKCS#8 PEM, sealed by `oih_runtime.crypto` with IAM's master key (never in clear).
    private_pem: str
    create_time: datetime = Field(default_factory=utcnow)
    #: When a newer key takes over (set by a rotation, which pre-announces the newer key, so it
    #: may lie in the future); the key stays published until its tokens have expired.
    retire_time: datetime | None = None


class RevocationRow(SQLModel, table=True):
    """A revoked token id or subject, kept until every token it matches has expired."""

    __tablename__ = "iam_revocation"
    id: int | None = Field(default=None, primary_key=True)
    token_id: str = ""
    subject: str = ""
    issued_before: int = 0
    expires: int


#: IAM's own tables.
TABLES = (TenantRow, UserRow, UnknownLoginRow, RoleRow, ServiceAccountRow, SigningKeyRow,
          RevocationRow)
