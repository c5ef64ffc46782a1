"""The orchestrator's own tables: what it deployed, and which executions it started.

A deployment row is the orchestrator's memory of a flow it runs: the reconciler compares it
with what the driver really runs, and a restarted orchestrator learns from it which workers to
adopt, restart or remove. Step specs are stored WITHOUT broker passwords (the URL has no
credentials): a worker that must be created again gets a fresh password for its step's user,
so no secret lives in the database.

Tables are made by `create_all`, which does not alter existing ones: a database created before
a column was added (e.g. `flow`) must be dropped or migrated by hand (pre-release).
"""

# No `from __future__ import annotations`: SQLModel reads the annotations at runtime.
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, DateTime
from sqlmodel import Field, SQLModel

from oih_runtime.clock import utcnow


class DeploymentState(StrEnum):
    """A deployment's state, stored by its name. The orchestrator's own (the contract shows
    flows' and workers' states, not this one), so a typed enum here rather than a proto's.
    STOPPED rows are kept (tenant and version of past runs, for the executions and dead-letter
    views); everything else in them is gone."""

    STARTING = "STARTING"
    ACTIVE = "ACTIVE"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


# The members by their short names, for the modules and tests that import them so.
STARTING, ACTIVE = DeploymentState.STARTING, DeploymentState.ACTIVE
STOPPING, STOPPED = DeploymentState.STOPPING, DeploymentState.STOPPED
FAILED = DeploymentState.FAILED
#: States in which workers should exist.
RUNNING_STATES = (STARTING, ACTIVE)

_WHEN = DateTime(timezone=True)


class DeploymentRow(SQLModel, table=True):
    __tablename__ = "orchestrator_deployment"

    flow_id: str = Field(primary_key=True, max_length=64)
    tenant: str = Field(index=True, max_length=200)
    #: A `DeploymentState` (a str: the column holds its name).
    state: str = Field(index=True, max_length=16)
    state_reason: str = ""
    flow_version: int = 0
    started_by: str = ""
    driver: str = Field(default="local", max_length=32)
    #: The step that receives an execution's first message (the node no edge points to).
    entry_step: str = ""
    #: StepSpec dicts (oih_dataplane.spec), amqp_url without credentials.
    specs: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: step id -> broker user name.
    broker_users: dict[str, str] = Field(default_factory=dict,
                                         sa_column=Column(JSON, nullable=False))
    #: step id -> the component's resource name (to look the component up again on redeploy).
    components: dict[str, str] = Field(default_factory=dict,
                                       sa_column=Column(JSON, nullable=False))
    #: The flow last asked to start (its proto3 JSON form), so that a start the orchestrator
    #: acknowledged but did not finish (it died) can be finished after a restart.
    flow: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    create_time: datetime = Field(default_factory=utcnow, sa_type=_WHEN)
    update_time: datetime = Field(default_factory=utcnow, sa_type=_WHEN)


class ExecutionStartRow(SQLModel, table=True):
    """An execution whose first message was published: a second request with the same id
    (a retried RPC, a redelivered `oih.flow.execute`) publishes nothing."""

    __tablename__ = "orchestrator_execution_start"

    flow_id: str = Field(primary_key=True, max_length=64)
    execution_id: str = Field(primary_key=True, max_length=64)
    tenant: str = Field(index=True, max_length=200)
    source: str = Field(default="api", max_length=32)
    flow_version: int = 0
    create_time: datetime = Field(default_factory=utcnow, sa_type=_WHEN)


#: The deployments' tables (the executions view has its own).
TABLES = (DeploymentRow, ExecutionStartRow)
