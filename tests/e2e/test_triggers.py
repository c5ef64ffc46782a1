"""The trigger path end to end: every way of starting a flow answers only once the first
message is in RabbitMQ, refuses a flow that is not running instead of dropping the run, carries
its source into the executions view, and delivers the JSON exactly as it was sent."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import grpc
import httpx
import pytest

from oih.iam.v1 import iam_pb2, iam_pb2_grpc
from oih.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from oih_cli.platform import INTERNAL_CLIENT_ID, Platform
from tests.e2e.conftest import RECEIVER_HOST, auth, unique, wait_sink, wait_state

#: Values a double cannot hold, and text that must stay as it is.
PAYLOAD: dict[str, Any] = {
    "id": 123456789012345678901234567890,
    "beyond_2_53": 9007199254740993,
    "negative": -9223372036854775809,
    "n": 21,
    "price": 19.99,
    "text": "Grüße, 世界 ✓ \u2028 \"quoted\" \\ back",
    "nested": {"list": [1, 2.5, None, True, "x"], "empty": {}},
}


def assert_exact(received: dict[str, Any], sent: dict[str, Any]) -> None:
    # JSON equality is not enough (21 == 21.0 in Python): compare the canonical JSON text.
    assert json.dumps(received, sort_keys=True) == json.dumps(sent, sort_keys=True)


def flow_with_mapper(rest: httpx.Client, token: str, builtins: dict[str, str],
                     settings: dict[str, Any] | None = None) -> str:
    """trigger → sink, the edge with a JSONata mapper (data passes through JSONata)."""
    created = rest.post("/v1/flows", headers=auth(token), json={
        "display_name": unique("exact"),
        "graph": {"nodes": [
            {"id": "start", "component": builtins["trigger"], "function": "webhook"},
            {"id": "sink", "component": builtins["sink"], "function": "sink"}],
            "edges": [{"source": "start", "target": "sink",
                       "mapper": "$merge([data, {'mapped': true}])"}]},
        "webhook_settings": settings or {}})
    assert created.status_code == 200, created.text
    name = str(created.json()["name"])
    assert rest.post(f"/v1/{name}:start", headers=auth(token), json={}).status_code == 200
    wait_state(rest, token, name, "STATE_ACTIVE", timeout=60)
    return name


def platform_token(platform: Platform) -> str:
    """The platform services' own token (what the scheduler calls StartExecution with)."""
    with grpc.insecure_channel(platform.address("iam")) as channel:
        reply = iam_pb2_grpc.IamServiceStub(channel).ExchangeToken(iam_pb2.ExchangeTokenRequest(
            client_id=INTERNAL_CLIENT_ID, client_secret=platform._internal_secret()), timeout=10)
    return str(reply.access_token)


def test_execute_on_a_flow_that_is_not_active_fails_precondition(
        rest: httpx.Client, integrator: dict[str, str], builtins: dict[str, str]) -> None:
    token = integrator["token"]
    created = rest.post("/v1/flows", headers=auth(token), json={
        "display_name": unique("idle"), "graph": {"nodes": [
            {"id": "start", "component": builtins["trigger"], "function": "manual"}]}})
    name = created.json()["name"]
    refused = rest.post(f"/v1/{name}:execute", headers=auth(token), json={"data": {"n": 1}})
    assert refused.status_code == 400, refused.text
    assert refused.json()["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    # Started and stopped again: still refused, and no execution was recorded for either call.
    assert rest.post(f"/v1/{name}:start", headers=auth(token), json={}).status_code == 200
    wait_state(rest, token, name, "STATE_ACTIVE", timeout=60)
    assert rest.post(f"/v1/{name}:stop", headers=auth(token), json={}).status_code == 200
    wait_state(rest, token, name, "STATE_INACTIVE", timeout=60)
    again = rest.post(f"/v1/{name}:execute", headers=auth(token), json={"data": {"n": 2}})
    assert again.status_code == 400, again.text
    listed = rest.get(f"/v1/{name}/executions", headers=auth(token))
    assert listed.status_code in (200, 404), listed.text
    assert listed.json().get("executions", []) == []


def test_start_execution_refuses_a_flow_the_orchestrator_does_not_run(
        platform: Platform, rest: httpx.Client, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    # The Flow Repository's view and the orchestrator's can differ for a moment (a stop in
    # flight): the orchestrator itself refuses instead of answering with a run it drops.
    token = integrator["token"]
    name = flow_with_mapper(rest, token, builtins)
    assert rest.post(f"/v1/{name}:stop", headers=auth(token), json={}).status_code == 200
    wait_state(rest, token, name, "STATE_INACTIVE", timeout=60)
    with grpc.insecure_channel(platform.address("orchestrator")) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.StartExecution(orchestrator_pb2.StartExecutionRequest(
                flow=name, data_json='{"n": 1}', source="scheduler"),
                metadata=(("authorization", f"Bearer {platform_token(platform)}"),), timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_tenant_cannot_claim_another_source(
        rest: httpx.Client, integrator: dict[str, str], builtins: dict[str, str]) -> None:
    name = flow_with_mapper(rest, integrator["token"], builtins)
    spoofed = rest.post(f"/v1/{name}/executions", headers=auth(integrator["token"]),
                        json={"data_json": "{}", "source": "scheduler"})
    assert spoofed.status_code == 403, spoofed.text


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records raw request bodies; fails while `failing` is set."""

    bodies: ClassVar[list[bytes]] = []
    failing = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        status = 500 if self.failing.is_set() else 200
        if status == 200:
            self.bodies.append(body)
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def recorder() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer((RECEIVER_HOST, 0), _Recorder)
    _Recorder.bodies = []
    _Recorder.failing.clear()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{RECEIVER_HOST}:{server.server_address[1]}/"
    server.shutdown()


def test_every_trigger_path_delivers_the_json_exactly_and_records_its_source(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    token = integrator["token"]
    name = flow_with_mapper(rest, token, builtins)
    expected = {**PAYLOAD, "mapped": True}

    # :execute through REST
    executed = rest.post(
        f"/v1/{name}:execute", headers={**auth(token), "content-type": "application/json"},
        content=json.dumps({"data": PAYLOAD}, ensure_ascii=False).encode())
    assert executed.status_code == 200, executed.text
    # a webhook
    hooked = rest.post(f"/hooks/{name.removeprefix('flows/')}",
                       content=json.dumps(PAYLOAD).encode(),
                       headers={"content-type": "application/json"})
    assert hooked.status_code == 200, hooked.text
    # the scheduler's way in: StartExecution with the platform's token and raw JSON
    with grpc.insecure_channel(platform.address("orchestrator")) as channel:
        scheduled = orchestrator_pb2_grpc.OrchestratorServiceStub(channel).StartExecution(
            orchestrator_pb2.StartExecutionRequest(flow=name, data_json=json.dumps(PAYLOAD),
                                                   source="scheduler"),
            metadata=(("authorization", f"Bearer {platform_token(platform)}"),), timeout=30)
    lines = wait_sink(platform, name, "sink", 3)
    by_execution = {line["execution_id"]: line["data"] for line in lines}
    runs = {"api": executed.json()["execution"], "webhook": hooked.json()["execution"],
            "scheduler": scheduled.name}
    for source, execution in runs.items():
        assert_exact(by_execution[execution.rsplit("/", 1)[1]], expected)
        deadline = time.monotonic() + 20
        while True:
            view = rest.get(f"/v1/{execution}", headers=auth(token))
            if view.status_code == 200 and view.json()["state"] == "STATE_SUCCEEDED":
                break
            assert time.monotonic() < deadline, view.text
            time.sleep(0.2)
        assert view.json()["source"] == source
        assert [step["step_id"] for step in view.json()["steps"]] == ["start", "sink"]


def test_a_replayed_dead_letter_delivers_the_json_exactly(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str], recorder: str) -> None:
    token = integrator["token"]
    created = rest.post("/v1/flows", headers=auth(token), json={
        "display_name": unique("replayed"),
        "graph": {"nodes": [
            {"id": "start", "component": builtins["trigger"], "function": "manual"},
            {"id": "call", "component": builtins["http-request"], "function": "request",
             "fields": {"url": recorder},
             "settings": {"retry_policy": {"max_attempts": 1}}}],
            "edges": [{"source": "start", "target": "call", "mapper": "data"}]}})
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    assert rest.post(f"/v1/{name}:start", headers=auth(token), json={}).status_code == 200
    wait_state(rest, token, name, "STATE_ACTIVE", timeout=60)
    _Recorder.failing.set()
    executed = rest.post(f"/v1/{name}:execute", headers=auth(token),
                         content=json.dumps({"data": PAYLOAD}).encode())
    assert executed.status_code == 200, executed.text
    deadline = time.monotonic() + 30
    while True:
        letters = rest.get(f"/v1/{name}/deadLetters", headers=auth(token)).json()
        if letters.get("dead_letters") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(letters["dead_letters"]) == 1, letters
    _Recorder.failing.clear()
    replayed = rest.post(f"/v1/{letters['dead_letters'][0]['name']}:replay",
                         headers=auth(token), json={})
    assert replayed.status_code == 200, replayed.text
    deadline = time.monotonic() + 30
    while not _Recorder.bodies and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_Recorder.bodies) == 1
    assert_exact(json.loads(_Recorder.bodies[0]), PAYLOAD)
