"""How workers are run: the `Driver` protocol every driver implements, and `WorkerInfo`.

A driver only runs workers and says which components it can run; it knows nothing of flows' states, broker users or events. The
orchestrator decides WHAT should run (its deployments table) and the reconciler makes the
driver agree: missing workers are deployed again, workers of flows that are not running are
removed. So a driver must be able to say what it runs (`flows`, `workers`) from the real world
(processes, pods), not only from memory, and `deploy`/`remove` must be idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeAlias, runtime_checkable

from oih.components.v1 import components_pb2
from oih.orchestrator.v1.orchestrator_pb2 import Worker
from oih_dataplane.spec import StepSpec

#: A worker's state is the contract's `oih.orchestrator.v1.Worker.State`; the names below are
#: its values without the prefix, as the drivers speak them.
WorkerState: TypeAlias = Worker.State.ValueType
STARTING: WorkerState = Worker.STATE_STARTING
RUNNING: WorkerState = Worker.STATE_RUNNING
RESTARTING: WorkerState = Worker.STATE_RESTARTING
STOPPING: WorkerState = Worker.STATE_STOPPING
FAILED: WorkerState = Worker.STATE_FAILED


@dataclass(frozen=True)
class WorkerInfo:
    step_id: str
    #: One of the states above.
    state: WorkerState
    #: "pid:1234" (local) or the pod name (kubernetes).
    instance: str
    #: Restarts since the flow was deployed.
    restarts: int = 0
    #: When the current process or pod started.
    start_time: datetime | None = None
    #: Why the worker is RESTARTING or FAILED (exit code, last log line, pod condition).
    state_reason: str = ""


@runtime_checkable
class Driver(Protocol):
    #: "local" or "kubernetes" (shown in FlowRuntime.driver).
    name: str

    def deploy(self, flow_id: str, specs: Sequence[StepSpec],
               components: Mapping[str, components_pb2.Component],
               credentials: Mapping[str, bytes] | None = None) -> None:
        """Run one worker per spec (each spec carries its step's broker credentials in
        `amqp_url`). `components` maps each spec's step id to its component (image, pull
        policy, resources). `credentials` maps a step id to its resolved secret (a UTF-8 JSON
        object), handed to the worker without writing it to disk, a log, its command line or
        the workload's spec (see `oih_worker.credentials`). A step that already has a worker
        gets it replaced by one with the new spec; the flow's other steps are left alone.
        Returns once the workers are created; whether they consume is checked by the caller
        (queue consumers)."""

    def remove(self, flow_id: str) -> None:
        """Stop the flow's workers gracefully (SIGTERM: they finish and ack what they hold)
        and delete everything the driver made for them (spec files, Secrets). Removing a
        flow that has nothing is a no-op."""

    def workers(self, flow_id: str) -> list[WorkerInfo]:
        """The flow's workers as they are now (empty when there are none)."""

    def flows(self) -> set[str]:
        """Every flow id with at least one worker (or leftover) of this driver."""

    def refusal(self, component: components_pb2.Component) -> str:
        """Why this driver cannot run `component` ("" when it can): checked before a flow
        starts, so a component the driver cannot run fails the start with this reason."""

    def start(self) -> None:
        """Start the driver's own background work (e.g. supervising processes), if any."""

    def close(self) -> None:
        """Stop that background work; the workers keep running (a new orchestrator adopts
        them)."""
