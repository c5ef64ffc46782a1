"""Request-wide input rules: REQUIRED fields and NUL characters, named by path."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from oih.flows.v1 import flows_pb2
from oih.iam.v1 import iam_pb2
from oih_runtime.errors import InvalidArgument
from oih_runtime.validation import check_no_nul, check_required


def test_nul_characters_are_named_at_any_depth() -> None:
    fields = struct_pb2.Struct()
    fields.update({"ok": "fine", "bad": "a\0b", "list": ["x", "y\0"], "deep": {"k": "\0"}})
    request = flows_pb2.CreateFlowRequest(flow=flows_pb2.Flow(
        display_name="orders\0", graph=flows_pb2.Graph(nodes=[
            flows_pb2.Node(id="start", component="components/c", function="f", fields=fields)])))
    with pytest.raises(InvalidArgument) as refused:
        check_no_nul(request)
    assert sorted(field for field, _ in refused.value.violations) == sorted([
        "flow.display_name",
        "flow.graph.nodes[0].fields.fields['bad'].string_value",
        "flow.graph.nodes[0].fields.fields['list'].list_value.values[1].string_value",
        "flow.graph.nodes[0].fields.fields['deep'].struct_value.fields['k'].string_value",
    ])


def test_requests_without_nul_pass() -> None:
    check_no_nul(iam_pb2.LoginRequest(username="a@b.c", password="ünïcödé is fine"))


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_required(iam_pb2.CreateUserRequest(user=iam_pb2.User()), "CreateUser")
    assert [field for field, _ in refused.value.violations] == ["user.username", "password"]
