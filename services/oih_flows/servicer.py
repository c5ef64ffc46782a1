"""The FlowService servicer: converts protos to calls of `logic.Flows` and back, nothing more.

Access rules are declared in the contract and enforced by the shared interceptors; the caller
is `principal.current()`.
"""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2, json_format

from oih.flows.v1 import flows_pb2, flows_pb2_grpc
from oih_flows import convert, graph
from oih_flows.logic import Flows
from oih_runtime import jsontext, principal
from oih_runtime.depth import MAX_JSON_DEPTH, TOO_DEEP
from oih_runtime.errors import InvalidArgument

Context = grpc.ServicerContext


class FlowServicer(flows_pb2_grpc.FlowServiceServicer):
    def __init__(self, flows: Flows) -> None:
        self.flows = flows

    def CreateFlow(self, request: flows_pb2.CreateFlowRequest, context: Context) -> flows_pb2.Flow:
        return convert.flow(self.flows.create(principal.current(), request.flow))

    def GetFlow(self, request: flows_pb2.GetFlowRequest, context: Context) -> flows_pb2.Flow:
        return convert.flow(self.flows.get(principal.current(), request.name))

    def ListFlows(self, request: flows_pb2.ListFlowsRequest,
                  context: Context) -> flows_pb2.ListFlowsResponse:
        rows, token = self.flows.list(principal.current(), request.page_size,
                                      request.page_token, request.filter, request.order_by)
        return flows_pb2.ListFlowsResponse(flows=[convert.flow(r) for r in rows],
                                           next_page_token=token)

    def UpdateFlow(self, request: flows_pb2.UpdateFlowRequest, context: Context) -> flows_pb2.Flow:
        row = self.flows.update(principal.current(), request.flow,
                                list(request.update_mask.paths))
        return convert.flow(row)

    def DeleteFlow(self, request: flows_pb2.DeleteFlowRequest,
                   context: Context) -> empty_pb2.Empty:
        self.flows.delete(principal.current(), request.name, request.etag)
        return empty_pb2.Empty()

    def StartFlow(self, request: flows_pb2.StartFlowRequest, context: Context) -> flows_pb2.Flow:
        return convert.flow(self.flows.start(principal.current(), request.name))

    def StopFlow(self, request: flows_pb2.StopFlowRequest, context: Context) -> flows_pb2.Flow:
        return convert.flow(self.flows.stop(principal.current(), request.name))

    def ExecuteFlow(self, request: flows_pb2.ExecuteFlowRequest,
                    context: Context) -> flows_pb2.ExecuteFlowResponse:
        execution = self.flows.execute(principal.current(), request.name, _data_json(request))
        return flows_pb2.ExecuteFlowResponse(execution=execution)


def _data_json(request: flows_pb2.ExecuteFlowRequest) -> str:
    """The `data` to run with as JSON text: from the raw body (REST) as sent, else from the
    Struct of a gRPC caller."""
    if request.HasField("body") and request.body.data.strip():
        # The body is {"data": …}: its extra level is not the data's.
        body = jsontext.parse_object(request.body.data, "body", depth_field="data",
                                     max_depth=MAX_JSON_DEPTH + 1)
        if jsontext.depth(body.get("data")) > MAX_JSON_DEPTH:
            raise InvalidArgument.field("data", TOO_DEEP)
        unknown = sorted(set(body) - {"data"})
        if unknown:
            raise InvalidArgument.field(unknown[0], "unknown field; the body is {\"data\": {...}}")
        data = body.get("data", {})
        if not isinstance(data, dict):
            raise InvalidArgument.field("data", "must be a JSON object")
        return jsontext.dumps(data)
    problems = graph.non_finite(request.data, "data")
    if problems:
        raise InvalidArgument(problems)
    return jsontext.dumps(json_format.MessageToDict(request.data))
