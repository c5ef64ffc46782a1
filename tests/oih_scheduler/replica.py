"""One scheduler replica for the HA test: `python -m tests.oih_scheduler.replica DB_URL DIR`.

It runs the real `Firing` and `Ticker` against the shared PostgreSQL database. Its launcher
stands in for the orchestrator's StartExecution and keeps its contract (one execution per id):
it records each start in `ha_start` (one row per flow and execution id) (in its own transaction, as the orchestrator's publish is
independent of the scheduler's transaction), counting repeated calls with the same id.

With `OIH_TEST_HANG_AFTER=N`, the replica's N-th start records itself, writes `DIR/hung` and
then hangs inside the tick (holding the schedule's row lock) until the test SIGKILLs it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from oih_runtime.db import make_engine
from oih_scheduler.firing import Firing
from oih_scheduler.server import TABLES
from oih_scheduler.ticker import Ticker

CREATE = """CREATE TABLE IF NOT EXISTS ha_start (
    execution TEXT NOT NULL, flow TEXT NOT NULL, scheduled_time TEXT NOT NULL,
    calls INTEGER NOT NULL, replica TEXT NOT NULL, PRIMARY KEY (flow, execution))"""
RECORD = """INSERT INTO ha_start (execution, flow, scheduled_time, calls, replica)
    VALUES (:execution, :flow, :scheduled, 1, :replica)
    ON CONFLICT (flow, execution) DO UPDATE SET calls = ha_start.calls + 1"""


class RecordingStarts:
    def __init__(self, engine: Engine, folder: Path, hang_after: int) -> None:
        self.engine = engine
        self.folder = folder
        self.hang_after = hang_after
        self.count = 0

    def start(self, flow_id: str, execution_id: str, data: dict[str, Any]) -> str:
        with self.engine.begin() as connection:
            connection.execute(text(RECORD), {
                "execution": execution_id, "flow": flow_id,
                "scheduled": data["scheduled_time"], "replica": str(os.getpid())})
        self.count += 1
        if self.hang_after and self.count >= self.hang_after:
            (self.folder / "hung").write_text(f"{flow_id} {execution_id}")
            threading.Event().wait()  # stuck mid-tick, the row lock held, until SIGKILL
        return f"flows/{flow_id}/executions/{execution_id}"


def main() -> None:
    url, folder = sys.argv[1], Path(sys.argv[2])
    engine = make_engine(url, tables=TABLES)
    with engine.begin() as connection:
        connection.execute(text(CREATE))
    starts = RecordingStarts(engine, folder, int(os.environ.get("OIH_TEST_HANG_AFTER", "0")))
    grace = float(os.environ.get("OIH_SCHEDULER_MISFIRE_GRACE_SECONDS", "15"))
    firing = Firing(engine, starts, misfire_grace=timedelta(seconds=grace))
    ticker = Ticker(firing, max_sleep=0.2)
    ticker.start()
    (folder / f"ready-{os.getpid()}").write_text("")
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
