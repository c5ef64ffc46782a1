"""The Secrets service's tables. A value is stored only sealed (`oih_runtime.crypto`): the
current one and, during a rotation's grace period, the previous one."""

from datetime import datetime

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel

from oih_runtime.clock import utcnow


class SecretRow(SQLModel, table=True):
    __tablename__ = "secrets_secret"

    id: str = Field(primary_key=True, max_length=64)
    #: `tenants/{tenant}` as in tokens, so visibility compares it with the caller's claim as is.
    tenant: str = Field(index=True, max_length=200)
    display_name: str = Field(index=True, max_length=100)
    description: str = Field(default="", max_length=300)
    type: int = Field(index=True)
    #: `users/…` and `service-accounts/…` names; read whole, filtered rarely.
    owners: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: The value, sealed with this secret's name and tenant as associated data.
    sealed_value: str = Field(sa_column=Column(Text, nullable=False))
    fingerprint: str = Field(max_length=32)
    grace_seconds: int = 3600
    #: The value before the last rotation, until `previous_expire_time` (then cleared on read).
    sealed_previous: str = Field(default="", sa_column=Column(Text, nullable=False))
    previous_fingerprint: str = Field(default="", max_length=32)
    previous_expire_time: datetime | None = None
    value_update_time: datetime = Field(default_factory=utcnow)
    etag: str = Field(max_length=64)
    create_time: datetime = Field(default_factory=utcnow, index=True)
    update_time: datetime = Field(default_factory=utcnow, index=True)


#: The tables of this service (`make_engine` creates these and no others).
TABLES = (SecretRow,)
