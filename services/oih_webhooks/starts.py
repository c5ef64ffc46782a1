"""Starting the execution: the orchestrator's StartExecution with this service's token
(source "webhook"), its errors mapped to what a webhook caller should see."""

from __future__ import annotations

import grpc

from oih.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from oih_runtime.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable

from .logic import StartRequest

#: Initial metadata of StartExecution: "false" when the execution existed already.
CREATED_HEADER = "x-oih-execution-created"


class OrchestratorStarts:
    def __init__(self, channel: grpc.Channel, timeout: float = 20.0) -> None:
        self._stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        self._timeout = timeout

    def __call__(self, request: StartRequest) -> tuple[str, bool]:
        try:
            execution, call = self._stub.StartExecution.with_call(
                orchestrator_pb2.StartExecutionRequest(
                flow=request.flow, data_json=request.data_json,
                metadata_json=request.metadata_json,
                # Only an id the request implies (Idempotency-Key, a SYNC reply's
                # correlation): nothing retries this call, and an id of ours would cost the
                # orchestrator a lookup of earlier starts; without one it picks a fresh UUID.
                execution_id=request.execution_id,
                source="webhook", reply_to=request.reply_to,
                max_queued_messages=request.max_queued_messages),
                # Waits for the orchestrator to be reachable (e.g. just restarted).
                timeout=self._timeout, wait_for_ready=True)
        except grpc.RpcError as error:
            code = error.code()
            if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                raise NotFound("flow", request.flow) from None
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise ResourceExhausted(f"flow {request.flow} has too many messages waiting; "
                                        "try again later", retry_after=1.0,
                                        reason="FLOW_BACKLOGGED") from None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument.field("body", str(error.details())) from None
            raise Unavailable(f"the orchestrator did not start the execution: {code.name}",
                              reason="ORCHESTRATOR_UNAVAILABLE") from None
        # A repeated id returns the first execution; the metadata says whether this call
        # created it.
        created = dict(call.initial_metadata() or ()).get(CREATED_HEADER, "true")
        return str(execution.name), created != "false"
