"""The request limit is a number of JSON bytes per route, whatever the transcoded protobuf
weighs: a body at the limit reaches the service, a byte more is a JSON 413 that names the
limit (also for a client that sends its whole body before reading). Real Envoy, real gRPC."""

from __future__ import annotations

import inspect
import json
import socket
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import httpx
import pytest

from oih.flows.v1 import flows_pb2, flows_pb2_grpc
from oih.iam.v1 import iam_pb2_grpc
from oih_gateway.render import PROTOBUF_GROWTH, render_envoy_config
from oih_runtime.server import MAX_MESSAGE_BYTES
from tests.gateway.conftest import all_upstreams, start_gateway
from tests.gateway.test_gateway import IAM, IamDouble, assert_local_error, bearer, rs256

FLOWS = "oih.flows.v1.FlowService"
LIMIT = 256 * 1024  # the default JSON limit in this test (the platform's is 1 MiB)
LARGE = 1024 * 1024  # the :execute and webhook limit in this test (the platform's is 10 MiB)


class FlowsDouble(flows_pb2_grpc.FlowServiceServicer):
    """Answers how much arrived: the serialized size of what the transcoder made."""

    def CreateFlow(self, request: flows_pb2.CreateFlowRequest, context: Any) -> flows_pb2.Flow:
        return flows_pb2.Flow(name="flows/f", description=str(request.ByteSize()))

    def ExecuteFlow(self, request: flows_pb2.ExecuteFlowRequest,
                    context: Any) -> flows_pb2.ExecuteFlowResponse:
        return flows_pb2.ExecuteFlowResponse(execution=str(request.ByteSize()))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    iam_pb2_grpc.add_IamServiceServicer_to_server(IamDouble(), server)
    flows_pb2_grpc.add_FlowServiceServicer_to_server(FlowsDouble(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{port}"
    base_url, envoy = start_gateway(
        tmp_path_factory.mktemp("gateway"), all_upstreams({IAM: address, FLOWS: address}),
        max_request_bytes=LIMIT, large_request_bytes=LARGE)
    try:
        yield base_url
    finally:
        envoy.stop()
        server.stop(None).wait()


@pytest.fixture(scope="module")
def http(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=30) as client:
        yield client


def numbers(size: int, wrap: str) -> bytes:
    """JSON of exactly `size` bytes, an array of small numbers placed where `wrap` has `{}`,
    whose protobuf form is several times larger (each `0,` becomes an 11-byte Value)."""
    head, tail = wrap.split("{}")
    count = (size - len(head) - len(tail) - 1) // 2
    body = f"{head}[{','.join(['0'] * count)}]{tail}"
    return (body + " " * (size - len(body))).encode()


def create(http: httpx.Client, body: bytes) -> httpx.Response:
    return http.post("/v1/flows", content=body, headers={
        "content-type": "application/json", **bearer(rs256(permissions=["flows.write"]))})


def execute(http: httpx.Client, body: bytes) -> httpx.Response:
    return http.post("/v1/flows/f:execute", content=body, headers={
        "content-type": "application/json", **bearer(rs256(permissions=["flows.execute"]))})


FLOW = '{"display_name": "x", "graph": {"nodes": [{"id": "a", "fields": {"list": {}}}]}}'
DATA = '{"data": {"list": {}}}'


def test_json_at_the_default_limit_reaches_the_service_however_large_its_protobuf(
        http: httpx.Client) -> None:
    response = create(http, numbers(LIMIT, FLOW))
    assert response.status_code == 200, response.text
    assert int(response.json()["description"]) > 3 * LIMIT  # the protobuf outgrew the JSON


def test_json_over_the_default_limit_is_413_naming_the_limit(http: httpx.Client) -> None:
    body = assert_local_error(create(http, numbers(LIMIT + 1, FLOW)), 413)
    assert f"{LIMIT} bytes" in body["message"], body
    assert body["limit_bytes"] == LIMIT, body


def test_execute_takes_the_large_limit(http: httpx.Client) -> None:
    response = execute(http, numbers(LARGE, DATA))
    assert response.status_code == 200, response.text
    body = assert_local_error(execute(http, numbers(LARGE + 1, DATA)), 413)
    assert f"{LARGE} bytes" in body["message"], body


def test_a_client_sending_its_whole_body_first_reads_the_413(gateway: str) -> None:
    """No `Expect: 100-continue`, the whole body written before reading: the client still gets
    the JSON 413, not a reset connection."""
    body = numbers(LARGE + LARGE // 2, DATA)
    host, port = gateway.removeprefix("http://").split(":")
    head = (f"POST /v1/flows/f:execute HTTP/1.1\r\nhost: {host}\r\n"
            f"authorization: Bearer {rs256(permissions=['flows.execute'])}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.partition(b"\r\n\r\n")[2]) < _length(reply):
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
    status, _, rest = reply.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 413"), reply[:300]
    payload = json.loads(rest.partition(b"\r\n\r\n")[2])
    assert payload["code"] == 413 and f"{LARGE} bytes" in payload["message"], payload


def _length(reply: bytes) -> int:
    head = reply.partition(b"\r\n\r\n")[0].decode().lower()
    for line in head.split("\r\n"):
        name, _, value = line.partition(":")
        if name == "content-length":
            return int(value)
    return 1 << 30


def test_services_accept_what_the_gateway_lets_through() -> None:
    large = inspect.signature(render_envoy_config).parameters["large_request_bytes"].default
    assert large * PROTOBUF_GROWTH <= MAX_MESSAGE_BYTES
