"""Helpers of the scheduler tests: arming schedules the way the flow events do, and a launcher
that records what it was asked to start (idempotent per execution id, like StartExecution)."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from oih.events.v1 import event_pb2, orchestrator_pb2
from oih.events.v1 import flows_pb2 as flow_events
from oih.flows.v1 import flows_pb2
from oih_runtime.db import transaction
from oih_scheduler import events
from oih_scheduler.firing import FlowNotRunning

EVENT = event_pb2.Event()


def start_flow(engine: Engine, flow_id: str, cron: str, tenant: str = "tenants/t1") -> None:
    """What `oih.flow.starting` then `oih.flow.started` do."""
    flow = flows_pb2.Flow(name=f"flows/{flow_id}", tenant=tenant, cron=cron)
    with transaction(engine) as session:
        events.flow_starting(session, EVENT, flow_events.FlowStarting(flow=flow))
    with transaction(engine) as session:
        events.flow_started(session, EVENT, orchestrator_pb2.FlowStateChanged(
            flow=f"flows/{flow_id}", tenant=tenant))


def finish_execution(engine: Engine, execution: str, tenant: str = "tenants/t1") -> None:
    with transaction(engine) as session:
        events.execution_finished(session, EVENT, orchestrator_pb2.ExecutionFinished(
            execution=execution, succeeded=True, tenant=tenant))


class RecordingLauncher:
    """Starts nothing; records each start (a repeated execution id starts nothing new)."""

    def __init__(self) -> None:
        self.started: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls = 0
        self.not_running: set[str] = set()
        self.failing: set[str] = set()
        self._lock = threading.Lock()

    def start(self, flow_id: str, execution_id: str, data: dict[str, Any]) -> str:
        with self._lock:
            self.calls += 1
            if flow_id in self.failing:
                raise ConnectionError("orchestrator unavailable")
            if flow_id in self.not_running:
                raise FlowNotRunning(f"flows/{flow_id} is not running")
            self.started.setdefault((flow_id, execution_id), data)
        return f"flows/{flow_id}/executions/{execution_id}"

    def scheduled_times(self, flow_id: str) -> list[datetime]:
        return sorted(datetime.fromisoformat(data["scheduled_time"])
                      for (flow, _), data in self.started.items() if flow == flow_id)
