"""The orchestrator's domain values → protos (the executions view converts its own rows in
`executions/views.py`)."""

from __future__ import annotations

from datetime import datetime

from oih.orchestrator.v1 import orchestrator_pb2 as pb

from .drivers import WorkerInfo
from .models import DeploymentRow


def worker(info: WorkerInfo) -> pb.Worker:
    proto = pb.Worker(step_id=info.step_id, state=info.state, instance=info.instance,
                      restarts=info.restarts, state_reason=info.state_reason)
    if info.start_time is not None:
        proto.start_time.FromDatetime(info.start_time)
    return proto


def flow_runtime(row: DeploymentRow, workers: list[WorkerInfo], queues: list[pb.QueueDepth],
                 observed: datetime) -> pb.FlowRuntime:
    runtime = pb.FlowRuntime(name=f"flows/{row.flow_id}/runtime", driver=row.driver,
                             flow_version=row.flow_version,
                             workers=[worker(w) for w in workers], queues=queues)
    runtime.observe_time.FromDatetime(observed)
    return runtime
