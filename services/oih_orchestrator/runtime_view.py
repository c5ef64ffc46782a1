"""The FlowRuntime view: the driver's workers and the broker's queue depths of one flow,
read here and made a proto by `convert.flow_runtime`."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

from oih.orchestrator.v1 import orchestrator_pb2 as pb
from oih_dataplane import topology
from oih_dataplane.spec import StepSpec

from . import convert
from .amqp import Amqp
from .drivers import RUNNING, STARTING, Driver, WorkerInfo
from .management import Management, ManagementError
from .models import DeploymentRow

log = logging.getLogger(__name__)


def queue_depth(amqp: Amqp, management: Management, vhost: str, spec: StepSpec) -> pb.QueueDepth:
    flow_id, step_id = spec.flow_id, spec.step_id
    name = topology.step_queue(flow_id, step_id)

    def ready(queue: str) -> int:
        count = amqp.count(queue)
        return count.messages if count is not None else 0

    depth = pb.QueueDepth(step_id=step_id, queue=name, ready=ready(name))
    # Only the management API knows unacked counts (refreshed every few seconds by the
    # broker's statistics); the view stays useful without it.
    try:
        stats = management.queue(vhost, name) or {}
        depth.unacked = int(stats.get("messages_unacknowledged", 0))
    except ManagementError as error:
        log.info("queue stats unavailable", extra={"queue": name, "error": str(error)})
    depth.retrying = sum(ready(topology.retry_queue(flow_id, step_id, level))
                         for level in range(1, spec.retry.retry_levels + 1))
    depth.dead_lettered = ready(topology.dead_queue(flow_id, step_id))
    return depth


def consuming(amqp: Amqp, info: WorkerInfo, flow_id: str) -> WorkerInfo:
    """A worker the driver still calls STARTING runs once its queue has a consumer (the
    driver only knows the process is alive; the broker knows it is at work)."""
    if info.state != STARTING:
        return info
    count = amqp.count(topology.step_queue(flow_id, info.step_id))
    return replace(info, state=RUNNING) if count is not None and count.consumers else info


def flow_runtime(row: DeploymentRow, driver: Driver, amqp: Amqp, management: Management,
                 vhost: str) -> pb.FlowRuntime:
    workers = [consuming(amqp, w, row.flow_id) for w in driver.workers(row.flow_id)]
    queues = [queue_depth(amqp, management, vhost, StepSpec.from_dict(raw)) for raw in row.specs]
    return convert.flow_runtime(row, workers, queues, datetime.now(UTC))
