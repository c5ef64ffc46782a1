"""Exactly once under HA: three scheduler processes against one PostgreSQL database fire
every tick of twenty every-second schedules once — none twice, none lost — while one replica
hangs in the middle of a tick (holding its row lock) and is SIGKILLed, and another is
SIGKILLed at a random moment and replaced."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih_runtime.clock import utcnow
from oih_runtime.cron import parse
from oih_runtime.db import make_engine
from oih_scheduler.models import FIRED, ScheduleRow, TickRow, aware
from oih_scheduler.server import TABLES
from tests.oih_scheduler.support import start_flow
from tests.support import postgres

FLOWS = 20
CRON = "* * * * * *"


@pytest.fixture
def shared_database() -> Iterator[tuple[str, Engine]]:
    with postgres.fresh_database() as url:
        engine = make_engine(url, tables=TABLES)
        yield url, engine
        engine.dispose()


def replica(url: str, folder: Path, hang_after: int = 0, grace: float = 15.0
            ) -> subprocess.Popen[bytes]:
    folder.mkdir(exist_ok=True)
    env = {**os.environ, "OIH_TEST_HANG_AFTER": str(hang_after),
           "OIH_SCHEDULER_MISFIRE_GRACE_SECONDS": str(grace)}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(str(root / p) for p in ("generated", "services", "."))
    process = subprocess.Popen([sys.executable, "-m", "tests.oih_scheduler.replica", url,
                                str(folder)], env=env, cwd=root, stdout=subprocess.DEVNULL,
                               stderr=(folder / "log").open("ab"))
    deadline = time.monotonic() + 60
    while not (folder / f"ready-{process.pid}").exists():
        assert process.poll() is None, (folder / "log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return process


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.postgres
def test_three_replicas_fire_every_tick_exactly_once(shared_database: tuple[str, Engine],
                                                     tmp_path: Path) -> None:
    url, engine = shared_database
    flows = [f"ha{i:02d}" for i in range(FLOWS)]
    for flow_id in flows:
        start_flow(engine, flow_id, CRON)
    replicas = [replica(url, tmp_path / "a"), replica(url, tmp_path / "b"),
                replica(url, tmp_path / "hangs", hang_after=25)]
    killed = 0
    try:
        # The third replica hangs mid-tick after its 25th start, holding that schedule's row
        # lock: the others skip the row (SKIP LOCKED) until the replica is killed.
        wait_for(tmp_path / "hangs" / "hung")
        time.sleep(2.0)
        replicas[2].send_signal(signal.SIGKILL)
        replicas[2].wait()
        killed += 1
        time.sleep(2.5)
        # Kill another one at an arbitrary moment and start a replacement.
        replicas[0].send_signal(signal.SIGKILL)
        replicas[0].wait()
        killed += 1
        replicas[0] = replica(url, tmp_path / "c")
        time.sleep(3.0)
    finally:
        for process in replicas:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in replicas:
            process.wait(30)
    hung_flow, hung_execution = (tmp_path / "hangs" / "hung").read_text().split()

    with Session(engine) as session:
        schedules = {row.flow_id: row for row in session.exec(select(ScheduleRow)).all()}
        ticks = session.exec(select(TickRow).where(col(TickRow.outcome) == FIRED)).all()
        starts = session.execute(text(
            "SELECT execution, flow, scheduled_time, calls FROM ha_start")).all()
    started_ticks: dict[str, list[str]] = {f: [] for f in flows}
    for execution, flow_id, _scheduled, _calls in starts:
        started_ticks[flow_id].append(execution)
    total = 0
    schedule = parse(CRON)
    for flow_id in flows:
        row = schedules[flow_id]
        recorded = sorted(t.tick for t in ticks if t.flow_id == flow_id)
        first = aware(recorded[0])
        assert first is not None
        # Every tick from the first one up to the next (unfired) run fired exactly once.
        next_run = aware(row.next_run_time)
        assert next_run is not None
        expected = [first, *schedule.ticks(first, next_run - timedelta(microseconds=1))]
        assert [aware(t) for t in recorded] == expected, flow_id
        # Started: every fired tick, and at most the next one besides, when a replica was
        # stopped at the end between starting it and committing (it stays due, and its repeat
        # would carry the same execution id).
        fired_ids = {f"tick-{t:%Y%m%dT%H%M%S}000000Z" for t in expected}
        started = set(started_ticks[flow_id])
        assert fired_ids <= started, flow_id
        assert started - fired_ids <= {f"tick-{next_run:%Y%m%dT%H%M%S}000000Z"}, flow_id
        total += len(expected)
    assert total >= 100
    # A start repeats only where a replica died between starting and committing; the repeat
    # carries the same execution id (the orchestrator runs it once). The hung tick is one.
    repeated = {(flow, execution): calls for execution, flow, _, calls in starts if calls > 1}
    assert repeated.get((hung_flow, hung_execution)) == 2, repeated
    assert len(repeated) <= killed and set(repeated.values()) == {2}
    assert hung_flow in flows
    # The schedules kept firing on time afterwards (nothing left behind).
    now = utcnow()
    assert all(aware(r.next_run_time) > now - timedelta(seconds=20)  # type: ignore[operator]
               for r in schedules.values())


@pytest.mark.postgres
def test_ticks_missed_while_the_scheduler_was_stopped_follow_each_policy(
        shared_database: tuple[str, Engine], tmp_path: Path) -> None:
    """One replica runs, is stopped (SIGTERM) for six seconds, and starts again: of the ticks
    missed meanwhile, FIRE_ONCE fires one, SKIP none, FIRE_ALL those within its 3 s window."""
    url, engine = shared_database
    policies = {"once": "FIRE_ONCE", "skip": "SKIP", "all": "FIRE_ALL"}
    for flow_id, policy in policies.items():
        start_flow(engine, flow_id, CRON)
        with Session(engine) as session:
            row = session.get(ScheduleRow, flow_id)
            assert row is not None
            row.misfire_policy, row.catch_up_seconds = policy, 3
            session.add(row)
            session.commit()
    first = replica(url, tmp_path / "first", grace=1.0)
    time.sleep(3)
    first.send_signal(signal.SIGTERM)
    first.wait(30)
    time.sleep(6)
    second = replica(url, tmp_path / "second", grace=1.0)
    time.sleep(3)
    second.send_signal(signal.SIGTERM)
    second.wait(30)

    with Session(engine) as session:
        ticks = session.exec(select(TickRow).where(col(TickRow.outcome) == FIRED)).all()
    resumed = [t for t in ticks if t.fired_by.endswith(f":{second.pid}")]
    first: dict[str, datetime] = {}
    for flow_id in policies:
        before = sorted(t.tick for t in ticks
                        if t.flow_id == flow_id and not t.fired_by.endswith(f":{second.pid}"))
        after = sorted(t.tick for t in resumed if t.flow_id == flow_id)
        assert len(before) >= 2 and len(after) >= 2, (flow_id, before, after)
        # Contiguous on both sides of the downtime: one hole, where the policy acted.
        for side in (before, after):
            assert all(b - a == timedelta(seconds=1)
                       for a, b in itertools.pairwise(side)), (flow_id, side)
        assert after[0] - before[-1] > timedelta(seconds=3), flow_id
        first[flow_id] = after[0]
    # The restarted replica decided all three in one round, at one instant `now`:
    # FIRE_ONCE fired the latest missed tick (the last one due at `now`), SKIP none of them
    # (its first is the next tick after `now`), FIRE_ALL the three of its 3 s window.
    assert first["skip"] - first["once"] == timedelta(seconds=1), first
    assert first["once"] - first["all"] == timedelta(seconds=2), first
