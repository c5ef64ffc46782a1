"""The Snapshots service's tables.

`SnapshotRow` is keyed by (flow, step, execution); the execution is "" for a step's persistent
snapshot. A deleted snapshot stays as a tombstone (`deleted`, no data) with its sequence, so a
write that the broker delivers late cannot bring it back; tombstones of finished executions
are purged after a day. `FlowRow` remembers each flow's tenant from the flow events, because
a worker's write names only its flow (by the exchange it came through).
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime
from sqlmodel import Field, SQLModel

from oih_runtime.clock import utcnow

_WHEN = DateTime(timezone=True)


class SnapshotRow(SQLModel, table=True):
    __tablename__ = "snapshots_snapshot"

    flow_id: str = Field(primary_key=True, max_length=64)
    step_id: str = Field(primary_key=True, max_length=64)
    execution_id: str = Field(primary_key=True, default="", max_length=64)
    tenant: str = Field(index=True, max_length=200)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: The emission sequence of the write stored here; lower ones are dropped.
    sequence: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    deleted: bool = Field(default=False, index=True)
    etag: str = Field(max_length=64)
    update_time: datetime = Field(default_factory=utcnow, sa_type=_WHEN, index=True)


class FlowRow(SQLModel, table=True):
    __tablename__ = "snapshots_flow"

    flow_id: str = Field(primary_key=True, max_length=64)
    tenant: str = Field(index=True, max_length=200)


TABLES = (SnapshotRow, FlowRow)
