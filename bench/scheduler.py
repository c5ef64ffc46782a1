"""Scheduler firing lag: how long after a tick's due time the scheduler starts the execution.

Baseline: a bare thread that sleeps until each whole second (`Event.wait`) and notes how late it
woke — the timer lag of this machine right now. Then the real `Firing` + `Ticker` (one replica)
on SQLite, and on PostgreSQL when it is reachable, with every-second schedules and a launcher
that notes the moment StartExecution would be called (the orchestrator's own latency is the
trigger path's, measured in its own benchmark). Prints p50 / p95 / max lag in milliseconds and
the ratio of each p50 to the baseline's. Nothing here is asserted in tests.

    .venv/bin/python -m bench.scheduler --seconds 20 --schedules 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from oih_runtime.cron import parse
from oih_runtime.db import make_engine
from oih_scheduler.firing import Firing
from oih_scheduler.server import TABLES
from oih_scheduler.ticker import Ticker


class LagRecorder:
    def __init__(self) -> None:
        self.lags: list[float] = []
        self._lock = threading.Lock()

    def start(self, flow_id: str, execution_id: str, data: dict[str, Any]) -> str:
        now = time.time()
        due = datetime.fromisoformat(data["scheduled_time"]).timestamp()
        with self._lock:
            self.lags.append((now - due) * 1000)
        return f"flows/{flow_id}/executions/{execution_id}"


def baseline(seconds: int) -> list[float]:
    lags = []
    stop = threading.Event()
    for _ in range(seconds):
        due = float(int(time.time()) + 1)
        stop.wait(due - time.time())
        lags.append((time.time() - due) * 1000)
    return lags


def scheduler(url: str, seconds: int, schedules: int) -> list[float]:
    from tests.oih_scheduler.support import start_flow

    engine = make_engine(url, tables=TABLES)
    for index in range(schedules):
        start_flow(engine, f"bench{index}", "* * * * * *")
    recorder = LagRecorder()
    ticker = Ticker(Firing(engine, recorder), max_sleep=1.0)
    parse("* * * * * *")  # import and compile before timing
    ticker.start()
    time.sleep(seconds)
    ticker.stop()
    engine.dispose()
    return recorder.lags[schedules:]  # the first round may include arming


def summary(lags: list[float]) -> tuple[float, float, float]:
    ordered = sorted(lags)
    return (statistics.median(ordered), ordered[int(len(ordered) * 0.95) - 1], ordered[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--schedules", type=int, default=5)
    args = parser.parse_args()
    rows = [("baseline: a thread waking each second", baseline(args.seconds))]
    with tempfile.TemporaryDirectory() as folder:
        rows.append((f"scheduler, SQLite, {args.schedules} schedules",
                     scheduler(f"sqlite:///{Path(folder) / 's.db'}", args.seconds,
                               args.schedules)))
    try:
        from tests.support import postgres

        with postgres.fresh_database() as url:
            rows.append((f"scheduler, PostgreSQL, {args.schedules} schedules",
                         scheduler(url, args.seconds, args.schedules)))
    except Exception as error:  # no PostgreSQL here: report SQLite only
        print(f"(PostgreSQL skipped: {error})")
    base = summary(rows[0][1])[0]
    print("\nScheduler firing lag (ms after the due time)")
    print(f"  {'':44} {'p50':>8} {'p95':>8} {'max':>8}  p50 ratio to baseline")
    for label, lags in rows:
        p50, p95, worst = summary(lags)
        print(f"  {label:44} {p50:8.1f} {p95:8.1f} {worst:8.1f}  {p50 / max(base, 0.01):6.1f}x"
              f"  ({len(lags)} ticks)")


if __name__ == "__main__":
    main()
