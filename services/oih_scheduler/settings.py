"""The Scheduler's own settings (`OIH_SCHEDULER_*`), beside the shared ones."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from oih_runtime.settings import DEFAULT_PORTS


@dataclass(frozen=True)
class SchedulerSettings:
    #: The orchestrator, whose StartExecution fires a tick.
    orchestrator_address: str
    #: Ticks later than this count as missed and follow the schedule's misfire policy.
    misfire_grace: timedelta
    #: The longest sleep between rounds: how soon a replica sees schedules that others or the
    #: API changed. Due ticks wake it sooner.
    max_sleep: float
    #: How long fired ticks are remembered (operators' history; the HA guarantee needs only
    #: the ticks of the last few seconds).
    tick_retention: timedelta

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SchedulerSettings:
        env = os.environ if env is None else env
        return cls(
            orchestrator_address=env.get(
                "OIH_ORCHESTRATOR_ADDRESS", f"127.0.0.1:{DEFAULT_PORTS['orchestrator']}"),
            misfire_grace=timedelta(
                seconds=float(env.get("OIH_SCHEDULER_MISFIRE_GRACE_SECONDS", "15"))),
            max_sleep=float(env.get("OIH_SCHEDULER_MAX_SLEEP_SECONDS", "1")),
            tick_retention=timedelta(
                hours=float(env.get("OIH_SCHEDULER_TICK_RETENTION_HOURS", "24"))),
        )
