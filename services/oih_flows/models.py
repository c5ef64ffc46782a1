"""The Flow Repository's tables.

The graph and the webhook settings are stored as the JSON form of their protos: they are read
and written whole. Owners and the components a flow uses get tables of their own, because the
list filters (`owner=`, `component=`) and the IAM event handlers query by them.
"""

# No `from __future__ import annotations`: SQLModel resolves relationship types at runtime.
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, ForeignKey, Index, String
from sqlmodel import Field, Relationship, SQLModel

from oih_runtime.clock import utcnow

#: timestamptz on PostgreSQL, so comparisons with aware UTC times mean what they say.
_WHEN = DateTime(timezone=True)


def new_etag(_previous: object = None) -> str:
    return uuid.uuid4().hex


# The etag is SQLAlchemy's version column: every UPDATE of a flow says `WHERE etag = <the one
# read>` and writes a fresh one, so two concurrent changes cannot both win (the loser gets
# StaleDataError, answered ABORTED). The same guard protects event handlers and the sweeper.
_ETAG = Column("etag", String(64), nullable=False)


class FlowRow(SQLModel, table=True):
    __tablename__ = "flows_flow"
    # ListFlows orders by one of these columns and the id, within the caller's tenant or (the
    # platform admin) over all: one index per order, so a page is a range of an index and never
    # a sort of every flow (tests/oih_runtime/test_query_plans.py).
    __table_args__ = tuple(
        Index(f"ix_flows_flow_{scope}{column}_page", *prefix, column, "id")
        for column in ("create_time", "update_time", "display_name")
        for scope, prefix in (("tenant_", ("tenant",)), ("", ()))
    )
    __mapper_args__ = {"version_id_col": _ETAG, "version_id_generator": new_etag}

    id: str = Field(primary_key=True, max_length=64)
    tenant: str = Field(max_length=200)  # tenants/{id}
    display_name: str
    description: str = ""
    state: int = Field(index=True)
    state_reason: str = ""
    #: When the flow entered its current state: the sweeper's clock for STARTING and STOPPING.
    state_time: datetime = Field(default_factory=utcnow, index=True, sa_type=_WHEN)
    graph: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    cron: str = ""
    webhook_settings: dict[str, Any] = Field(default_factory=dict,
                                             sa_column=Column(JSON, nullable=False))
    version: int = 1
    revision_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    running_version: int = 0
    started_by: str = ""
    etag: str = Field(default_factory=new_etag, sa_column=_ETAG)
    create_time: datetime = Field(default_factory=utcnow, sa_type=_WHEN)
    update_time: datetime = Field(default_factory=utcnow, sa_type=_WHEN)

    owners: list["FlowOwnerRow"] = Relationship(
        sa_relationship_kwargs={"cascade": "all, delete-orphan", "lazy": "selectin",
                                "order_by": "FlowOwnerRow.position"})
    components: list["FlowComponentRow"] = Relationship(
        sa_relationship_kwargs={"cascade": "all, delete-orphan", "lazy": "selectin"})


class FlowOwnerRow(SQLModel, table=True):
    __tablename__ = "flows_owner"

    flow_id: str = Field(sa_column=Column(String(64), ForeignKey("flows_flow.id",
                                                                 ondelete="CASCADE"),
                                          primary_key=True))
    owner: str = Field(primary_key=True, max_length=300)  # users/…, tenants/…, service-accounts/…
    owner_type: int
    #: Keeps the owners in the order the client gave them.
    position: int = 0


class FlowComponentRow(SQLModel, table=True):
    """A component one of the flow's nodes runs (for the `component=` filter)."""

    __tablename__ = "flows_component"

    flow_id: str = Field(sa_column=Column(String(64), ForeignKey("flows_flow.id",
                                                                 ondelete="CASCADE"),
                                          primary_key=True))
    component: str = Field(primary_key=True, max_length=300)


#: The Flow Repository's own tables.
TABLES = (FlowRow, FlowOwnerRow, FlowComponentRow)
