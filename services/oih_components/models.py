"""The Component Repository's tables.

Owners live in a table of their own (not a JSON column) because visibility and the
`owner="users/jane"` filter are SQL conditions on them; functions and resources are only ever
read whole, so they are JSON. No `from __future__ import annotations`: SQLModel resolves the
relationship's type at class creation.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, Relationship, SQLModel

from oih_runtime.clock import utcnow

# The oih.components.v1.Access values, as stored.
ACCESS_PRIVATE, ACCESS_TENANT, ACCESS_PUBLIC = 1, 2, 3



class ComponentRow(SQLModel, table=True):
    __tablename__ = "components_component"
    # ListComponents orders by one of these columns and the id; visibility is an OR that no
    # index can narrow, so the list walks the order's index and filters as it goes (no sort of
    # every component; tests/oih_runtime/test_query_plans.py).
    __table_args__ = tuple(
        Index(f"ix_components_component_{column}_page", column, "id")
        for column in ("create_time", "update_time", "display_name")
    )

    id: str = Field(primary_key=True, max_length=64)
    #: `tenants/{tenant}` as in tokens, so visibility compares it with the caller's claim as is.
    tenant: str = Field(index=True, max_length=200)
    display_name: str = Field(max_length=50)
    description: str = Field(default="", max_length=300)
    version: str = Field(default="", max_length=100)
    access: int = Field(default=ACCESS_PRIVATE, index=True)
    # The distribution: exactly one of `image` and `entry_point` is non-empty.
    image: str = Field(default="", max_length=500)
    image_pull_policy: int = 0
    entry_point: str = Field(default="", max_length=500)
    #: [{"name", "description", "config_schema"?}] in the order the author gave them.
    triggers: list[dict[str, Any]] = Field(default_factory=list,
                                           sa_column=Column(JSON, nullable=False))
    actions: list[dict[str, Any]] = Field(default_factory=list,
                                          sa_column=Column(JSON, nullable=False))
    #: The ResourceRequirements message in its JSON form ({} when unset).
    resources: dict[str, Any] = Field(default_factory=dict,
                                      sa_column=Column(JSON, nullable=False))
    etag: str = Field(max_length=64)
    create_time: datetime = Field(default_factory=utcnow)
    update_time: datetime = Field(default_factory=utcnow)

    # selectin: a page of components loads all their owners in one more query, and rows stay
    # usable after the session closes (the servicer converts them afterwards).
    owners: list["OwnerRow"] = Relationship(
        back_populates="component",
        sa_relationship_kwargs={"lazy": "selectin", "cascade": "all, delete-orphan",
                                "order_by": "OwnerRow.position"},
    )


class OwnerRow(SQLModel, table=True):
    __tablename__ = "components_owner"

    component_id: str = Field(foreign_key="components_component.id", primary_key=True,
                              ondelete="CASCADE", max_length=64)
    #: `users/…`, `tenants/…` or `service-accounts/…`; the prefix matches `owner_type`.
    owner_id: str = Field(primary_key=True, index=True, max_length=200)
    owner_type: int
    position: int = 0

    component: ComponentRow | None = Relationship(back_populates="owners")


#: The Component Repository's own tables (make_engine adds the bus's).
TABLES = (ComponentRow, OwnerRow)
