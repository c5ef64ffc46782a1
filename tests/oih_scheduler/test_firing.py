"""Firing ticks with a fixed clock, on SQLite and PostgreSQL: due ticks, the DST day, missed
ticks after downtime (each misfire policy), overlap policies, a flow that stopped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih_runtime.db import transaction
from oih_scheduler.firing import Firing
from oih_scheduler.models import BUFFER_ONE, FIRE_ALL, SKIP, SKIPPED, ScheduleRow, TickRow, aware
from tests.oih_scheduler.support import RecordingLauncher, finish_execution, start_flow


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def setup(engine: Engine, cron: str, now: datetime, flow: str = "f1"
          ) -> tuple[Firing, RecordingLauncher, Clock]:
    clock = Clock(now)
    launcher = RecordingLauncher()
    firing = Firing(engine, launcher, misfire_grace=timedelta(seconds=15), clock=clock)
    # Arming reads the real clock: the flow starts "now", the test then moves its own clock.
    start_flow(engine, flow, cron)
    with transaction(engine) as session:
        row = session.get(ScheduleRow, flow)
        assert row is not None
        row.next_run_time = parse_next(cron, row.time_zone, now)
        session.add(row)
    return firing, launcher, clock


def parse_next(cron: str, zone: str, now: datetime) -> datetime:
    from oih_runtime.cron import parse
    return parse(cron, zone).next_after(now)


def set_policy(engine: Engine, flow: str, **values: object) -> None:
    with transaction(engine) as session:
        row = session.get(ScheduleRow, flow)
        assert row is not None
        for key, value in values.items():
            setattr(row, key, value)
        if "time_zone" in values:
            row.next_run_time = None
        session.add(row)


def schedule(engine: Engine, flow: str = "f1") -> ScheduleRow:
    with Session(engine) as session:
        row = session.get(ScheduleRow, flow)
        assert row is not None
        return row


def run_minutes(firing: Firing, clock: Clock, minutes: int, step: timedelta) -> None:
    """Let the scheduler run: a round every `step` for `minutes`."""
    end = clock.now + timedelta(minutes=minutes)
    while clock.now < end:
        clock.now += step
        firing.fire_due()


T0 = datetime(2026, 6, 1, 12, 0, 30, tzinfo=UTC)


def test_each_due_tick_fires_once(engine: Engine) -> None:
    firing, launcher, clock = setup(engine, "* * * * *", T0)
    run_minutes(firing, clock, 10, timedelta(seconds=7))
    fired = launcher.scheduled_times("f1")
    assert fired == [T0.replace(second=0) + timedelta(minutes=m) for m in range(1, 11)]
    assert launcher.calls == 10
    row = schedule(engine)
    assert aware(row.next_run_time) == T0.replace(second=0) + timedelta(minutes=11)
    assert row.last_execution == f"flows/f1/executions/tick-{fired[-1]:%Y%m%dT%H%M%S}000000Z"


def test_dst_day_with_a_fixed_clock(engine: Engine) -> None:
    """A 02:30 Berlin job, the scheduler running every minute through both change days."""
    start = datetime(2026, 3, 28, 0, 0, tzinfo=UTC)
    firing, launcher, clock = setup(engine, "30 2 * * *", start)
    set_policy(engine, "f1", time_zone="Europe/Berlin")
    with transaction(engine) as session:
        row = session.get(ScheduleRow, "f1")
        assert row is not None
        row.next_run_time = parse_next("30 2 * * *", "Europe/Berlin", start)
        session.add(row)
    run_minutes(firing, clock, 3 * 24 * 60, timedelta(minutes=1))
    spring = [t.isoformat() for t in launcher.scheduled_times("f1")]
    assert spring == ["2026-03-28T01:30:00+00:00", "2026-03-29T01:30:00+00:00",
                      "2026-03-30T00:30:00+00:00"]
    clock.now = datetime(2026, 10, 24, 0, 0, tzinfo=UTC)
    with transaction(engine) as session:
        row = session.get(ScheduleRow, "f1")
        assert row is not None
        row.next_run_time = parse_next("30 2 * * *", "Europe/Berlin", clock.now)
        session.add(row)
    run_minutes(firing, clock, 3 * 24 * 60, timedelta(minutes=1))
    autumn = [t.isoformat() for t in launcher.scheduled_times("f1")][3:]
    # 02:30 CEST on the 24th and 25th (00:30 UTC), 02:30 CET on the 26th (01:30 UTC).
    assert autumn == ["2026-10-24T00:30:00+00:00", "2026-10-25T00:30:00+00:00",
                      "2026-10-26T01:30:00+00:00"]


@pytest.mark.parametrize(("policy", "expected"), [
    ("FIRE_ONCE", ["12:20"]),
    ("SKIP", []),
    (FIRE_ALL, ["12:16", "12:17", "12:18", "12:19", "12:20"]),
])
def test_missed_ticks_follow_the_misfire_policy(engine: Engine, policy: str,
                                                expected: list[str]) -> None:
    """The scheduler was stopped from 12:00:30 to 12:20:30 (no rounds); catch-up window 5 min."""
    firing, launcher, clock = setup(engine, "* * * * *", T0)
    set_policy(engine, "f1", misfire_policy=policy, catch_up_seconds=300)
    clock.now = T0 + timedelta(minutes=20)
    firing.fire_due()
    assert [f"{t:%H:%M}" for t in launcher.scheduled_times("f1")] == expected
    # Then on schedule again: the next tick is the first after the downtime.
    assert aware(schedule(engine).next_run_time) == datetime(2026, 6, 1, 12, 21, tzinfo=UTC)


def test_late_ticks_within_the_grace_all_fire(engine: Engine) -> None:
    firing, launcher, clock = setup(engine, "* * * * * *", T0)
    clock.now = T0 + timedelta(seconds=10)  # ten ticks due, all within the 15 s grace
    firing.fire_due()
    assert len(launcher.scheduled_times("f1")) == 10


def test_skip_if_running_skips_ticks_until_the_execution_finishes(engine: Engine) -> None:
    firing, launcher, clock = setup(engine, "* * * * *", T0)
    set_policy(engine, "f1", overlap_policy=SKIP)
    run_minutes(firing, clock, 3, timedelta(seconds=30))
    assert len(launcher.scheduled_times("f1")) == 1  # 12:01 fired; 12:02 and 12:03 skipped
    running = schedule(engine).running_execution
    finish_execution(engine, running)
    run_minutes(firing, clock, 1, timedelta(seconds=30))
    assert len(launcher.scheduled_times("f1")) == 2
    with Session(engine) as session:
        skipped = session.exec(select(TickRow).where(col(TickRow.outcome) == SKIPPED)).all()
    assert len(skipped) == 2


def test_buffer_one_runs_once_more_after_the_running_execution(engine: Engine) -> None:
    firing, launcher, clock = setup(engine, "* * * * *", T0)
    set_policy(engine, "f1", overlap_policy=BUFFER_ONE)
    run_minutes(firing, clock, 4, timedelta(seconds=30))
    assert len(launcher.started) == 1 and schedule(engine).buffered  # three ticks, one buffered
    finish_execution(engine, schedule(engine).running_execution)
    clock.now += timedelta(seconds=1)
    firing.fire_due()
    assert len(launcher.started) == 2  # the buffered run, at once
    assert not schedule(engine).buffered
    assert any(execution.startswith("buffered-") for _, execution in launcher.started)


def test_transient_failure_keeps_the_tick_due_and_holds_back_no_other(engine: Engine) -> None:
    firing, launcher, clock = setup(engine, "* * * * *", T0)
    start_flow(engine, "f2", "* * * * *")
    with transaction(engine) as session:
        other = session.get(ScheduleRow, "f2")
        assert other is not None
        other.next_run_time = datetime(2026, 6, 1, 12, 1, tzinfo=UTC)
        session.add(other)
    clock.now = T0 + timedelta(seconds=40)
    launcher.failing.add("f1")
    firing.fire_due()  # f1's start fails; f2 fires all the same
    assert launcher.scheduled_times("f1") == []
    assert launcher.scheduled_times("f2") == [datetime(2026, 6, 1, 12, 1, tzinfo=UTC)]
    assert aware(schedule(engine).next_run_time) == datetime(2026, 6, 1, 12, 1, tzinfo=UTC)
    launcher.failing.clear()
    clock.now += timedelta(seconds=2)
    firing.fire_due()
    assert launcher.scheduled_times("f1") == [datetime(2026, 6, 1, 12, 1, tzinfo=UTC)]


def test_flow_the_orchestrator_does_not_run_skips_the_tick(engine: Engine) -> None:
    firing, launcher, clock = setup(engine, "* * * * *", T0)
    launcher.not_running.add("f1")
    clock.now = T0 + timedelta(seconds=40)
    firing.fire_due()
    with Session(engine) as session:
        ticks = session.exec(select(TickRow)).all()
    assert [t.outcome for t in ticks] == [SKIPPED]
    assert aware(schedule(engine).next_run_time) == datetime(2026, 6, 1, 12, 2, tzinfo=UTC)
