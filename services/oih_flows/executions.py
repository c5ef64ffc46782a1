"""Starting executions for `:execute`: the Flow Repository calls the orchestrator's
StartExecution with its service token and answers with what the orchestrator answered.

Why a synchronous call and not the `oih.flow.execute` event it used to emit: an event only
says the request was written down, and the orchestrator could still find the flow not running
and drop it, so the caller held an execution id that never existed. StartExecution answers
only once the first step's message is confirmed by the broker, or with FAILED_PRECONDITION.
"""

from __future__ import annotations

from typing import Protocol

import grpc

from oih.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from oih_runtime.errors import FailedPrecondition, Unavailable


class ExecutionStarter(Protocol):
    def __call__(self, flow: str, data_json: str) -> str:
        """Start a run of `flows/{flow}` with `data` given as JSON text; returns the
        execution's name."""


class OrchestratorStarter:
    """The call waits for the orchestrator to be reachable (`wait_for_ready`, e.g. right after
    it restarted) up to `timeout`."""

    def __init__(self, channel: grpc.Channel, timeout: float = 20.0) -> None:
        self._stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        self._timeout = timeout

    def __call__(self, flow: str, data_json: str) -> str:
        try:
            # No execution id: nothing retries this call, so an id chosen here would make it
            # no more idempotent, and a caller's id costs the orchestrator a lookup of
            # earlier starts on every call; a fresh one (its own UUID) needs none.
            execution = self._stub.StartExecution(orchestrator_pb2.StartExecutionRequest(
                flow=flow, data_json=data_json, source="api"),
                timeout=self._timeout, wait_for_ready=True)
        except grpc.RpcError as error:
            code = error.code()
            if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                # The orchestrator runs nothing for it (yet, or any more).
                raise FailedPrecondition(
                    f"flow {flow} is not running in the orchestrator: {error.details()}",
                    reason="FLOW_NOT_ACTIVE", subject=flow) from None
            raise Unavailable(f"the orchestrator did not start the execution: {code.name}",
                              reason="ORCHESTRATOR_UNAVAILABLE") from None
        return str(execution.name)
