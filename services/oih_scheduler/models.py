"""The Scheduler's tables.

One row per flow with a cron expression (`ScheduleRow`, keyed by the flow id), and one row per
tick the scheduler fired or decided to skip (`TickRow`), whose primary key (flow, tick) makes a
second firing of the same tick impossible even if two claims ever overlapped: the insert of the
second one fails and its transaction rolls back.
"""

from datetime import datetime
from enum import StrEnum

from sqlalchemy import DateTime
from sqlmodel import Field, SQLModel

from oih_runtime import clock
from oih_runtime.clock import utcnow


class ScheduleState(StrEnum):
    """As stored: the `oih.scheduler.v1` State names without their prefix."""

    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"


class OverlapPolicy(StrEnum):
    """As stored: the OverlapPolicy names without their prefix."""

    ALLOW = "ALLOW"
    SKIP = "SKIP"
    BUFFER_ONE = "BUFFER_ONE"


class MisfirePolicy(StrEnum):
    """As stored: the MisfirePolicy names without their prefix."""

    FIRE_ONCE = "FIRE_ONCE"
    FIRE_ALL = "FIRE_ALL"


class TickOutcome(StrEnum):
    """What happened to a tick."""

    FIRED = "FIRED"
    SKIPPED = "SKIPPED"
    MISSED = "MISSED"


# The members by their short names, for the modules that import them so.
ACTIVE, PAUSED = ScheduleState.ACTIVE, ScheduleState.PAUSED
ALLOW, SKIP, BUFFER_ONE = OverlapPolicy.ALLOW, OverlapPolicy.SKIP, OverlapPolicy.BUFFER_ONE
FIRE_ONCE, FIRE_ALL = MisfirePolicy.FIRE_ONCE, MisfirePolicy.FIRE_ALL
FIRED, SKIPPED, MISSED = TickOutcome.FIRED, TickOutcome.SKIPPED, TickOutcome.MISSED

_WHEN = DateTime(timezone=True)


def aware(moment: datetime | None) -> datetime | None:
    """A stored time with its zone (SQLite forgets it), or None."""
    return None if moment is None else clock.aware(moment)


class ScheduleRow(SQLModel, table=True):
    __tablename__ = "scheduler_schedule"

    flow_id: str = Field(primary_key=True, max_length=64)
    tenant: str = Field(index=True, max_length=200)
    cron: str = Field(max_length=200)
    time_zone: str = Field(default="UTC", max_length=64)
    state: str = Field(default=ACTIVE, max_length=16)
    overlap_policy: str = Field(default=ALLOW, max_length=16)
    misfire_policy: str = Field(default=FIRE_ONCE, max_length=16)
    catch_up_seconds: int = 3600
    #: Whether the orchestrator runs the flow (between `oih.flow.started` and its stop).
    flow_active: bool = False
    #: The next tick to fire; None while PAUSED or while the flow is not active.
    next_run_time: datetime | None = Field(default=None, sa_type=_WHEN, index=True)
    last_run_time: datetime | None = Field(default=None, sa_type=_WHEN)
    last_execution: str = Field(default="", max_length=200)
    #: The execution the schedule started that has not finished yet ("" when none).
    running_execution: str = Field(default="", max_length=200)
    #: A tick waits for `running_execution` to end (OVERLAP BUFFER_ONE).
    buffered: bool = False
    etag: str = Field(max_length=64)
    update_time: datetime = Field(default_factory=utcnow, sa_type=_WHEN)


class TickRow(SQLModel, table=True):
    __tablename__ = "scheduler_tick"

    flow_id: str = Field(primary_key=True, max_length=64)
    #: The tick's due time (UTC), or the request time of a RunScheduleNow / buffered run.
    tick: datetime = Field(primary_key=True, sa_type=_WHEN)
    outcome: str = Field(max_length=16)
    execution: str = Field(default="", max_length=200)
    #: Which scheduler replica fired it (host:pid), for operators and the HA test.
    fired_by: str = Field(default="", max_length=200)
    fire_time: datetime = Field(default_factory=utcnow, sa_type=_WHEN)
TABLES = (ScheduleRow, TickRow)
