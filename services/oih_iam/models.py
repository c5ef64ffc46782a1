"""IAM's tables. Lists (roles, permissions) are stored as JSON arrays."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from oih_runtime.clock import utcnow


class TenantRow(SQLModel, table=True):
    __tablename__ = "iam_tenant"
    id: str = Field(primary_key=True)
    display_name: str = Field(unique=True)
    state: int = 1
    create_time: datetime = Field(default_factory=utcnow)
    update_time: datetime = Field(default_factory=utcnow)


class UserRow(SQLModel, table=True):
    __tablename__ = "iam_user"
    id: str = Field(primary_key=True)
    username: str = Field(unique=True, index=True)
    display_name: str = ""
    tenant_id: str = Field(index=True)
    roles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    permissions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    state: int = 1
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
    id: str = Field(primary_key=True)
    display_name: str
    description: str = ""
    tenant_id: str = Field(default="", index=True)  # "" for global built-in roles
    permissions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    built_in: bool = False


class ServiceAccountRow(SQLModel, table=True):
    __tablename__ = "iam_service_account"
    id: str = Field(primary_key=True)
    client_id: str = Field(unique=True, index=True)
    display_name: str
    tenant_id: str = Field(index=True)
    roles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    permissions: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    state: int = 1
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
