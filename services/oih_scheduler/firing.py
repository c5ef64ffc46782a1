"""Firing ticks, exactly once across replicas.

`fire_due(now)` claims one due schedule at a time in its own transaction, under a row lock that
other replicas skip (`SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite, for a single
replica, takes the database's write lock with BEGIN IMMEDIATE). Inside that transaction it
records the tick (`TickRow`, primary key flow + tick), calls the orchestrator's StartExecution
with an execution id derived from the flow and the tick, advances `next_run_time`, and commits.

Why this is exactly once:
- Two replicas never hold the same row: the second skips it, and finds it advanced once the
  first commits. Even if they did, the second insert of the same (flow, tick) would fail.
- A replica that dies after StartExecution but before its commit loses its connection, and with
  it the lock and the uncommitted advance: the next claimant fires the same tick again, with the
  same execution id, and the orchestrator answers with the execution it already started
  instead of publishing again (StartExecution is idempotent per execution id).
- A transient failure (orchestrator or broker down) rolls back: the tick stays due and is
  retried on the next round (other schedules go on); late by more than the misfire grace, it
  follows the misfire policy.

Ticks due more than `misfire_grace` ago were missed (no replica ran, or all were stuck) and
follow the schedule's misfire policy; ticks within the grace are simply late and all fire.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, or_
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih_runtime import cron
from oih_runtime.clock import utcnow
from oih_runtime.db import transaction
from oih_runtime.errors import FailedPrecondition

from .models import (
    ACTIVE,
    ALLOW,
    BUFFER_ONE,
    FIRE_ALL,
    FIRED,
    SKIP,
    SKIPPED,
    ScheduleRow,
    TickRow,
    aware,
)

log = logging.getLogger(__name__)

SOURCE = "scheduler"


class FlowNotRunning(Exception):
    """The orchestrator does not run the flow (FAILED_PRECONDITION or NOT_FOUND)."""


class Launcher(Protocol):
    def start(self, flow_id: str, execution_id: str, data: dict[str, Any]) -> str:
        """Start an execution of the flow (idempotent per execution id); returns its name,
        `flows/{flow}/executions/{execution}`. Raises FlowNotRunning, or anything else for a
        transient failure."""


def replica_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def tick_execution_id(tick: datetime, kind: str = "tick") -> str:
    """The execution id of a tick: the same for every replica that fires it."""
    return f"{kind}-{tick:%Y%m%dT%H%M%S}{tick.microsecond:06d}Z"


@dataclass
class Firing:
    engine: Engine
    launcher: Launcher
    #: Ticks later than this are missed and follow the misfire policy.
    misfire_grace: timedelta = timedelta(seconds=15)
    name: str = ""
    clock: Callable[[], datetime] = utcnow

    def __post_init__(self) -> None:
        self.name = self.name or replica_name()

    # --- the ticker's round ----------------------------------------------------------------

    def fire_due(self, now: datetime | None = None, limit: int = 1000) -> int:
        """Fire every tick due at `now` (default: the start of this round; ticks that fall due
        during the round are the next round's), and every buffered run that may go; returns
        how many were handled. One transaction per schedule and tick. One instant per round
        makes a round's decisions (which ticks were missed) agree with each other."""
        handled = 0
        current = now or self.clock()
        failed: set[str] = set()
        while handled < limit:
            claimed = ""
            try:
                with transaction(self.engine, lock=True) as session:
                    row = self._claim(session, current, failed)
                    if row is None:
                        return handled
                    claimed = row.flow_id
                    self._handle(session, row, current)
            except Exception:
                if not claimed:
                    raise  # the database itself: the ticker backs off
                # One schedule's failure (its start was refused for a reason that may pass)
                # must not hold back the others: its tick stays due for the next round.
                log.warning("firing schedules/%s failed; retrying next round", claimed,
                            exc_info=True)
                failed.add(claimed)
            handled += 1
        return handled

    def next_due(self) -> datetime | None:
        """The earliest next run of any firing schedule (for the ticker's sleep)."""
        with Session(self.engine) as session:
            found = session.exec(
                select(ScheduleRow.next_run_time)
                .where(col(ScheduleRow.state) == ACTIVE, col(ScheduleRow.flow_active),
                       col(ScheduleRow.next_run_time).is_not(None))
                .order_by(col(ScheduleRow.next_run_time)).limit(1)).first()
        return aware(found)

    def _claim(self, session: Session, now: datetime, failed: set[str]) -> ScheduleRow | None:
        buffered_ready = col(ScheduleRow.buffered) & (col(ScheduleRow.running_execution) == "")
        query = (select(ScheduleRow)
                 .where(col(ScheduleRow.state) == ACTIVE, col(ScheduleRow.flow_active),
                        or_(col(ScheduleRow.next_run_time) <= now, buffered_ready),
                        col(ScheduleRow.flow_id).not_in(failed))
                 .order_by(col(ScheduleRow.next_run_time))
                 .limit(1)
                 .with_for_update(skip_locked=True))
        return session.exec(query).first()

    def _handle(self, session: Session, row: ScheduleRow, now: datetime) -> None:
        due = aware(row.next_run_time)
        if row.buffered and not row.running_execution and (due is None or due > now):
            row.buffered = False
            self._fire(session, row, now, "buffered", now)
            return
        assert due is not None
        schedule = cron.parse(row.cron, row.time_zone)
        if now - due <= self.misfire_grace:
            self._tick(session, row, due, schedule.next_after(due), now)
            return
        # Missed ticks.
        if row.misfire_policy == FIRE_ALL:
            start = now - timedelta(seconds=row.catch_up_seconds)
            first = due if due >= start else schedule.next_after(start - timedelta(microseconds=1))
            if first <= now:
                self._tick(session, row, first, schedule.next_after(first), now)
                return
            row.next_run_time = first
        elif row.misfire_policy == SKIP:
            log.info("skipping missed ticks of flows/%s since %s", row.flow_id, due.isoformat())
            row.next_run_time = schedule.next_after(now)
        else:  # FIRE_ONCE: the latest missed tick stands for all of them
            latest = due
            following = schedule.next_after(due)
            while following <= now:
                latest, following = following, schedule.next_after(following)
            self._tick(session, row, latest, following, now)
            return
        session.add(row)

    def _tick(self, session: Session, row: ScheduleRow, tick: datetime, following: datetime,
              now: datetime) -> None:
        row.next_run_time = following
        if row.running_execution and row.overlap_policy != ALLOW:
            if row.overlap_policy == BUFFER_ONE:
                row.buffered = True
            self._record(session, row, tick, SKIPPED, "")
            session.add(row)
            return
        self._fire(session, row, tick, "tick", now, following)

    # --- firing ----------------------------------------------------------------------------

    def _fire(self, session: Session, row: ScheduleRow, tick: datetime, kind: str,
              now: datetime, following: datetime | None = None) -> str:
        execution_id = tick_execution_id(tick, kind)
        self._record(session, row, tick, FIRED, f"flows/{row.flow_id}/executions/{execution_id}")
        # `fired_at` is what the built-in `timer` trigger passes on.
        data = {"scheduled_time": _iso(tick), "fired_at": _iso(tick), "fire_time": _iso(now)}
        if following is not None:
            data["next_scheduled_time"] = _iso(following)
        try:
            name = self.launcher.start(row.flow_id, execution_id, data)
        except FlowNotRunning as error:
            # The flow stops or fails; its lifecycle event will disarm the schedule.
            log.warning("flows/%s is not running; tick %s skipped: %s", row.flow_id,
                        tick.isoformat(), error)
            _mark(session, row.flow_id, tick, SKIPPED)
            session.add(row)
            return ""
        row.last_run_time = now
        row.last_execution = name
        row.running_execution = name
        session.add(row)
        return name

    def _record(self, session: Session, row: ScheduleRow, tick: datetime, outcome: str,
                execution: str) -> None:
        session.add(TickRow(flow_id=row.flow_id, tick=tick, outcome=outcome,
                            execution=execution, fired_by=self.name))
        # Flushed now: a second firing of the same tick fails here, before calling anyone.
        session.flush()

    # --- RunScheduleNow ---------------------------------------------------------------------

    def run_now(self, flow_id: str) -> ScheduleRow:
        """Fire the schedule once now (the caller checked visibility)."""
        now = self.clock()
        with transaction(self.engine, lock=True) as session:
            row = session.exec(select(ScheduleRow).where(col(ScheduleRow.flow_id) == flow_id)
                               .with_for_update()).one()
            if not row.flow_active:
                raise FailedPrecondition(f"flows/{flow_id} is not ACTIVE",
                                         reason="FLOW_NOT_ACTIVE", subject=f"flows/{flow_id}")
            if row.running_execution and row.overlap_policy != ALLOW:
                raise FailedPrecondition(
                    f"{row.running_execution} is still running and the schedule does not "
                    "overlap runs", reason="EXECUTION_RUNNING", subject=f"schedules/{flow_id}")
            if not self._fire(session, row, now, "now", now):
                raise FailedPrecondition(f"flows/{flow_id} is not running",
                                         reason="FLOW_NOT_ACTIVE", subject=f"flows/{flow_id}")
            return row

    # --- upkeep ----------------------------------------------------------------------------

    def purge_ticks(self, keep: timedelta) -> int:
        with transaction(self.engine) as session:
            result = session.exec(delete(TickRow).where(
                col(TickRow.fire_time) < self.clock() - keep))
            return int(result.rowcount or 0)


def _mark(session: Session, flow_id: str, tick: datetime, outcome: str) -> None:
    recorded = session.get(TickRow, (flow_id, tick))
    if recorded is not None:
        recorded.outcome = outcome
        recorded.execution = ""
        session.add(recorded)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")

