"""The JSON depth rule (oih_runtime.depth): how deep is counted, and which field is named."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from oih.flows.v1 import flows_pb2 as pb
from oih_runtime.depth import MAX_JSON_DEPTH, json_depth, too_deep_paths


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def nested(levels: int, inner: Any = 1) -> Any:
    value = inner
    for _ in range(levels):
        value = {"a": value}
    return value


def test_depth_counts_objects_and_arrays() -> None:
    assert json_depth(struct({})) == 1
    assert json_depth(struct({"x": 1})) == 1
    assert json_depth(struct({"x": {"y": 1}})) == 2
    assert json_depth(struct({"x": [1, [2]]})) == 3
    assert json_depth(struct_pb2.Value(number_value=1)) == 0
    assert json_depth(struct(nested(MAX_JSON_DEPTH))) == MAX_JSON_DEPTH
    assert json_depth(struct(nested(MAX_JSON_DEPTH + 5))) == MAX_JSON_DEPTH + 1  # stops counting


def test_the_outermost_json_field_is_named() -> None:
    flow = pb.Flow(graph=pb.Graph(nodes=[
        pb.Node(id="ok", fields=struct(nested(MAX_JSON_DEPTH - 1))),
        pb.Node(id="deep", fields=struct({"x": nested(MAX_JSON_DEPTH)}))]))
    request = pb.CreateFlowRequest(flow=flow)
    assert too_deep_paths(request) == ["flow.graph.nodes[1].fields"]
    assert too_deep_paths(pb.ExecuteFlowRequest(data=struct(nested(3)))) == []
