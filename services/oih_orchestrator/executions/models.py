"""The executions view's tables (`orch_*`): executions, their steps, and counted batch ids.

Tables are made by `create_all`, which does not alter existing ones: a database created before
a column was added (e.g. `messages_routed`) must be dropped or migrated by hand (pre-release).

Counters are sums over every StepReport of a (flow, execution, step). Samples and the last
error are JSON because they are read and written whole. Rows are keyed by flow AND execution
id: callers may choose execution ids (StartExecution), so an id is unique only within a flow.
"""

# No `from __future__ import annotations`: SQLModel reads the annotations at runtime.
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index
from sqlmodel import Field, SQLModel

from oih_runtime.clock import utcnow


class ExecutionState(StrEnum):
    """An execution's state as stored: the names of `oih.orchestrator.v1.Execution.State`
    without their prefix (views.py converts at the edge)."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


RUNNING, SUCCEEDED, FAILED = ExecutionState.RUNNING, ExecutionState.SUCCEEDED, ExecutionState.FAILED

_WHEN = DateTime(timezone=True)




class ExecutionRow(SQLModel, table=True):
    __tablename__ = "orch_execution"
    # One per shape of ListExecutions (a flow or every flow; a tenant or the platform admin),
    # each ending in the list's order, so a page is a range of an index and never a sort of
    # all of a tenant's executions (tests/oih_runtime/test_query_plans.py).
    __table_args__ = (
        Index("ix_orch_execution_flow_tenant_page", "flow_id", "tenant", "create_time",
              "execution_id"),
        Index("ix_orch_execution_flow_page", "flow_id", "create_time", "execution_id"),
        Index("ix_orch_execution_tenant_page", "tenant", "create_time", "execution_id"),
        Index("ix_orch_execution_page", "create_time", "execution_id"),
    )

    flow_id: str = Field(primary_key=True, max_length=64)
    execution_id: str = Field(primary_key=True, max_length=64)
    tenant: str = Field(max_length=200)
    state: str = Field(default=RUNNING, index=True, max_length=16)
    #: Why the state rule says what it says (see state.py): settled, outstanding, unknown.
    progress: str = Field(default="outstanding", max_length=16)
    source: str = Field(default="", max_length=32)
    flow_version: int = 0
    #: Messages fed to the entry step from outside (the trigger's message).
    triggers: int = 1
    #: Next `StepExecutionRow.position` (steps are shown in the order first reported).
    next_position: int = 0
    create_time: datetime = Field(default_factory=utcnow, sa_type=_WHEN)
    update_time: datetime = Field(default_factory=utcnow, index=True, sa_type=_WHEN)
    end_time: datetime | None = Field(default=None, sa_type=_WHEN)


class StepExecutionRow(SQLModel, table=True):
    __tablename__ = "orch_step_execution"

    flow_id: str = Field(primary_key=True, max_length=64)
    execution_id: str = Field(primary_key=True, max_length=64)
    step_id: str = Field(primary_key=True, max_length=64)
    position: int = 0
    messages_in: int = 0
    messages_out: int = 0
    #: Deliveries published to successor steps (after edge conditions; see state.py).
    messages_routed: int = 0
    errors: int = 0
    dead_lettered: int = 0
    #: Dead letters of this step replayed into it again (each is one more input to expect).
    replayed: int = 0
    input_samples: list[dict[str, Any]] = Field(default_factory=list,
                                                sa_column=Column(JSON, nullable=False))
    output_samples: list[dict[str, Any]] = Field(default_factory=list,
                                                 sa_column=Column(JSON, nullable=False))
    #: ErrorRecord as JSON (proto3 JSON form), or None.
    last_error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class ReportBatchRow(SQLModel, table=True):
    """A StepReportBatch already counted: a redelivered batch is ignored."""

    __tablename__ = "orch_report_batch"

    id: str = Field(primary_key=True, max_length=64)
    receive_time: datetime = Field(default_factory=utcnow, index=True, sa_type=_WHEN)


#: The executions view's tables.
TABLES = (ExecutionRow, StepExecutionRow, ReportBatchRow)
