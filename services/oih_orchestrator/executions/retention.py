"""Keeping the view bounded and honest: retention, a cap per flow, and settling executions that
reports alone cannot close (a worker crash loses counts; see state.py).

Run `sweep(engine, now)` periodically (every minute is plenty); `purge` and `settle` are its
two halves, usable alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, tuple_
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from oih_runtime.db import transaction

from . import state as rule
from .ingest import counts_of, finish, steps_of
from .models import RUNNING, ExecutionRow, ExecutionState, ReportBatchRow, StepExecutionRow

#: Batch ids are remembered this long: redeliveries come within minutes, not days.
BATCH_ID_MEMORY = timedelta(days=1)


@dataclass(frozen=True)
class RetentionSettings:
    #: Executions not updated for this long are deleted.
    retention_days: float = 7.0
    #: At most this many executions per flow (the newest are kept).
    max_per_flow: int = 10_000
    #: A RUNNING execution with no change for this long is closed (counts lost in a worker
    #: crash leave it unexplained for ever). Longer than any sensible retry delay.
    stale_seconds: float = 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RetentionSettings:
        env = os.environ if env is None else env
        prefix = "OIH_ORCHESTRATOR_EXECUTION_"
        return cls(
            retention_days=float(env.get(prefix + "RETENTION_DAYS", "7")),
            max_per_flow=int(env.get(prefix + "MAX_PER_FLOW", "10000")),
            stale_seconds=float(env.get(prefix + "STALE_SECONDS", "3600")),
        )


def purge(engine: Engine, now: datetime, settings: RetentionSettings | None = None) -> int:
    """Delete executions past the retention period or beyond the cap of their flow, and old
    batch ids. Returns the number of executions deleted."""
    settings = settings or RetentionSettings.from_env()
    cutoff = now - timedelta(days=settings.retention_days)
    with transaction(engine) as session:
        doomed = set(session.exec(
            select(ExecutionRow.flow_id, ExecutionRow.execution_id)
            .where(ExecutionRow.update_time < cutoff)).all())
        crowded = session.exec(
            select(ExecutionRow.flow_id).group_by(ExecutionRow.flow_id)
            .having(func.count() > settings.max_per_flow)).all()
        for flow_id in crowded:
            doomed.update(session.exec(
                select(ExecutionRow.flow_id, ExecutionRow.execution_id)
                .where(ExecutionRow.flow_id == flow_id)
                .order_by(col(ExecutionRow.create_time).desc(),
                          col(ExecutionRow.execution_id).desc())
                .offset(settings.max_per_flow)).all())
        keys = sorted(doomed)
        # Chunks keep the IN lists within every database's parameter limit.
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            session.exec(delete(StepExecutionRow).where(
                tuple_(StepExecutionRow.flow_id, StepExecutionRow.execution_id).in_(chunk)))
            session.exec(delete(ExecutionRow).where(
                tuple_(ExecutionRow.flow_id, ExecutionRow.execution_id).in_(chunk)))
        session.exec(delete(ReportBatchRow).where(
            col(ReportBatchRow.receive_time) < now - min(BATCH_ID_MEMORY,
                                                        timedelta(days=settings.retention_days))))
    return len(keys)


def settle(engine: Engine, now: datetime, settings: RetentionSettings | None = None) -> int:
    """Close RUNNING executions that reports will not close (no change for `stale_seconds`).
    Returns how many were closed."""
    settings = settings or RetentionSettings.from_env()
    stale = now - timedelta(seconds=settings.stale_seconds)
    closed = 0
    with transaction(engine) as session:
        rows = session.exec(select(ExecutionRow).where(
            col(ExecutionRow.state) == RUNNING, col(ExecutionRow.update_time) < stale)).all()
        for row in rows:
            failed = rule.outstanding_dead_letters(counts_of(steps_of(session, row))) > 0
            state = ExecutionState.FAILED if failed else ExecutionState.SUCCEEDED
            finish(session, row, state, rule.SETTLED, now)
            session.add(row)
            closed += 1
    return closed


def sweep(engine: Engine, now: datetime, settings: RetentionSettings | None = None
          ) -> tuple[int, int]:
    """settle + purge; returns (closed, deleted)."""
    settings = settings or RetentionSettings.from_env()
    return settle(engine, now, settings), purge(engine, now, settings)
