"""Starting a flow's execution: the orchestrator's StartExecution over gRPC, carrying the
scheduler's service-account token (a platform service may start any tenant's flow)."""

from __future__ import annotations

import json
from typing import Any

import grpc
from google.protobuf import json_format

from oih.orchestrator.v1 import orchestrator_pb2 as pb
from oih.orchestrator.v1 import orchestrator_pb2_grpc

from .firing import SOURCE, FlowNotRunning

#: Fields of StartExecutionRequest that may be missing in an older contract (the trigger path's
#: `source` and raw-JSON `data_json` arrive with it); the launcher fills them when they exist.
_FIELDS = pb.StartExecutionRequest.DESCRIPTOR.fields_by_name


class OrchestratorLauncher:
    def __init__(self, channel: grpc.Channel, timeout: float = 10.0) -> None:
        self.stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        self.timeout = timeout

    def start(self, flow_id: str, execution_id: str, data: dict[str, Any]) -> str:
        request = start_request(flow_id, execution_id, data)
        try:
            execution = self.stub.StartExecution(request, timeout=self.timeout)
        except grpc.RpcError as error:
            code = error.code()
            if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                raise FlowNotRunning(error.details()) from None
            raise
        return str(execution.name)


def start_request(flow_id: str, execution_id: str, data: dict[str, Any]
                  ) -> pb.StartExecutionRequest:
    request = pb.StartExecutionRequest(flow=f"flows/{flow_id}", execution_id=execution_id)
    if "source" in _FIELDS:
        setattr(request, "source", SOURCE)  # noqa: B010 (a field of a newer contract)
    if "data_json" in _FIELDS:
        setattr(request, "data_json", json.dumps(data))  # noqa: B010
    else:
        json_format.ParseDict(data, request.data)
    return request
