"""Secrets end to end, through Envoy and the real platform processes: a tenant stores an API
key, a flow step uses it (the http-request built-in sends it to a test server), the key is
rotated with a grace period while the flow runs, and the value never shows up anywhere it
should not: REST answers, log files, the databases and spec files under the data directory
(events are stored there in each service's outbox), executions samples, the process table or
a worker's environment. Only the platform's own service token may resolve a value."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from oih.secrets.v1 import secrets_pb2, secrets_pb2_grpc
from oih_cli.platform import Platform
from oih_runtime import crypto
from tests.e2e.conftest import (
    RECEIVER_HOST,
    auth,
    create_tenant_with_admin,
    unique,
    wait_state,
)


class Receiver:
    """A local HTTP endpoint that records the API key header of every request."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        received = self.keys

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                received.append(self.headers.get("x-api-key", ""))
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        # The one address the e2e platform lets flows reach (OIH_EGRESS_ALLOWED_NETWORKS):
        # the rest of loopback stays refused, as the security tests expect.
        self.server = ThreadingHTTPServer((RECEIVER_HOST, 0), Handler)
        self.url = f"http://{RECEIVER_HOST}:{self.server.server_address[1]}/orders"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.keys) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(self.keys) >= count, self.keys
        return self.keys


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    running.thread.start()
    yield running
    running.server.shutdown()
    running.server.server_close()


class Answers:
    """Every REST answer of the test, to be searched for the value at the end."""

    def __init__(self, rest: httpx.Client) -> None:
        self.rest = rest
        self.texts: list[str] = []

    def __call__(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        reply = self.rest.request(method, path, headers=auth(token), **kwargs)
        self.texts.append(reply.text)
        return reply


def resolve_as(address: str, token: str, name: str, tenant: str) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        stub = secrets_pb2_grpc.SecretServiceStub(channel)
        try:
            stub.ResolveSecret(secrets_pb2.ResolveSecretRequest(name=name, tenant=tenant),
                               metadata=(("authorization", f"Bearer {token}"),), timeout=10)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def wait_executions(call: Answers, token: str, flow: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        listed = call("GET", f"/v1/{flow}/executions", token).json().get("executions", [])
        done = [e for e in listed if e["state"] in ("STATE_SUCCEEDED", "STATE_FAILED")]
        if len(done) >= count or time.monotonic() > deadline:
            assert len(done) >= count, listed
            return done
        time.sleep(0.3)


def files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_a_step_uses_a_secret_that_never_shows_and_survives_rotation(
        rest: httpx.Client, platform: Platform, admin_token: str, receiver: Receiver,
        builtins: dict[str, str]) -> None:
    call = Answers(rest)
    tenant, _, owner = create_tenant_with_admin(rest, admin_token)
    value = f"api-key-{uuid.uuid4().hex}"
    rotated_value = f"api-key-{uuid.uuid4().hex}"

    # A tenant administrator stores the key; no answer contains it.
    created = call("POST", "/v1/secrets", owner, json={
        "display_name": "orders API", "type": "TYPE_API_KEY", "value": {"api_key": value},
        "rotation_grace_period": "3600s"})
    assert created.status_code == 200, created.text
    secret = created.json()
    assert secret["tenant"] == tenant and len(secret["fingerprint"]) == 12
    assert "value" not in secret
    name = secret["name"]
    assert call("GET", f"/v1/{name}", owner).json()["fingerprint"] == secret["fingerprint"]
    assert name in [s["name"] for s in call("GET", "/v1/secrets", owner).json()["secrets"]]

    # A flow whose step sends the key with each request.
    flow = call("POST", "/v1/flows", owner, json={
        "display_name": unique("orders"),
        "graph": {
            "nodes": [
                {"id": "start", "component": builtins["trigger"], "function": "manual"},
                {"id": "send", "component": builtins["http-request"], "function": "request",
                 "credentials": name, "fields": {"url": receiver.url}},
            ],
            "edges": [{"source": "start", "target": "send"}],
        },
    })
    assert flow.status_code == 200, flow.text
    flow_name = flow.json()["name"]
    assert call("POST", f"/v1/{flow_name}:start", owner, json={}).status_code == 200
    wait_state(rest, owner, flow_name, "STATE_ACTIVE", timeout=60)
    assert call("POST", f"/v1/{flow_name}:execute", owner,
                json={"data": {"order": 1}}).status_code == 200
    assert receiver.wait_for(1) == [value]  # the component saw the value

    # Rotation with a grace period: the running flow keeps working with the key it holds.
    rotated = call("PATCH", f"/v1/{name}", owner, json={"value": {"api_key": rotated_value}})
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["previous_fingerprint"] == secret["fingerprint"]
    assert rotated.json()["fingerprint"] != secret["fingerprint"]
    assert call("POST", f"/v1/{flow_name}:execute", owner,
                json={"data": {"order": 2}}).status_code == 200
    assert receiver.wait_for(2)[1] == value
    executions = wait_executions(call, owner, flow_name, 2)
    assert {e["state"] for e in executions} == {"STATE_SUCCEEDED"}
    for execution in executions:
        assert call("GET", f"/v1/{execution['name']}", owner).status_code == 200

    # Restarted, the flow's worker gets the new key.
    assert call("POST", f"/v1/{flow_name}:stop", owner, json={}).status_code == 200
    wait_state(rest, owner, flow_name, "STATE_INACTIVE", timeout=60)
    assert call("POST", f"/v1/{flow_name}:start", owner, json={}).status_code == 200
    wait_state(rest, owner, flow_name, "STATE_ACTIVE", timeout=60)
    # While it runs: no process shows either key on its command line or in its environment.
    listing = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True,
                             check=True, text=True).stdout
    workers = [int(p.read_text()) for p in platform.data_dir.glob("workers/*/*.pid")]
    assert workers
    environments = b"".join(Path(f"/proc/{pid}/environ").read_bytes()
                            for pid in [*workers, *(c.pid for c in platform.children.values())])
    assert call("POST", f"/v1/{flow_name}:execute", owner,
                json={"data": {"order": 3}}).status_code == 200
    assert receiver.wait_for(3)[2] == rotated_value
    wait_executions(call, owner, flow_name, 3)
    assert call("POST", f"/v1/{flow_name}:stop", owner, json={}).status_code == 200
    wait_state(rest, owner, flow_name, "STATE_INACTIVE", timeout=60)

    # Every resolve was audited (who, which secret, which flow) in the Secrets outbox.
    with sqlite3.connect(platform.data_dir / "secrets.db") as db:
        audits = db.execute("SELECT body FROM oih_outbox_event WHERE event_type = ? AND "
                            "subject = ?", ("oih.secret.resolved", name)).fetchall()
    assert len(audits) == 2
    assert all(flow_name.encode() in body and b"service-accounts/" in body
               for (body,) in audits)

    # Nowhere: REST answers, every file under the data directory (logs, worker logs and spec
    # files, SQLite databases with their outboxes, the executions view), ps, environments.
    for needle in (value, rotated_value):
        assert not [t for t in call.texts if needle in t]
        assert files_containing(platform.data_dir, needle.encode()) == []
        assert needle not in listing
        assert needle.encode() not in environments


def test_tenant_admin_cannot_resolve_even_over_grpc(rest: httpx.Client, platform: Platform,
                                                    admin_token: str) -> None:
    tenant, _, owner = create_tenant_with_admin(rest, admin_token)
    created = rest.post("/v1/secrets", headers=auth(owner), json={
        "display_name": "hook key", "type": "TYPE_HMAC_KEY", "value": {"key": "k" * 32}})
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    gateway = platform.gateway_url.removeprefix("http://")
    for token in (owner, admin_token):  # a tenant admin, and even a platform admin
        for address in (gateway, platform.address("secrets")):  # through Envoy, and direct
            assert resolve_as(address, token, name, tenant) == grpc.StatusCode.PERMISSION_DENIED
    # There is no REST route to it at all.
    answer = rest.post(f"/v1/{name}:resolve", headers=auth(owner), json={})
    assert answer.status_code == 404


def test_other_tenants_secret_is_not_found_and_unusable(rest: httpx.Client, admin_token: str,
                                                        builtins: dict[str, str]
                                                        ) -> None:
    _, _, owner = create_tenant_with_admin(rest, admin_token)
    _, _, stranger = create_tenant_with_admin(rest, admin_token)
    created = rest.post("/v1/secrets", headers=auth(owner), json={
        "display_name": "crm", "type": "TYPE_BEARER_TOKEN", "value": {"token": "t0ken"}})
    name = created.json()["name"]
    for method, body in (("GET", None), ("PATCH", {"display_name": "mine"}),
                         ("DELETE", None)):
        answer = rest.request(method, f"/v1/{name}", headers=auth(stranger), json=body)
        assert answer.status_code == 404, answer.text
    assert rest.get(f"/v1/{name}", headers=auth(owner)).json()["display_name"] == "crm"
    flow = rest.post("/v1/flows", headers=auth(stranger), json={
        "display_name": unique("theft"),
        "graph": {"nodes": [
            {"id": "start", "component": builtins["trigger"], "function": "manual"},
            {"id": "send", "component": builtins["http-request"], "function": "request",
             "credentials": name, "fields": {"url": "http://127.0.0.1:9/"}},
        ], "edges": [{"source": "start", "target": "send"}]},
    })
    assert flow.status_code == 400, flow.text
    violations = flow.json()["details"][-1]["field_violations"]
    assert [v["field"] for v in violations] == ["flow.graph.nodes[1].credentials"]
    bad = rest.post("/v1/secrets", headers=auth(owner), json={
        "display_name": "x", "type": "TYPE_BASIC_AUTH", "value": {"username": "u"}})
    assert bad.status_code == 400
    assert json.loads(bad.text)["details"][-1]["field_violations"][0]["field"] == "secret.value"


def test_a_flow_whose_secret_was_deleted_fails_to_start_saying_why(
        rest: httpx.Client, admin_token: str, builtins: dict[str, str]
        ) -> None:
    _, _, owner = create_tenant_with_admin(rest, admin_token)
    name = rest.post("/v1/secrets", headers=auth(owner), json={
        "display_name": "short-lived", "type": "TYPE_API_KEY",
        "value": {"api_key": "sk-short-lived-value"}}).json()["name"]
    flow = rest.post("/v1/flows", headers=auth(owner), json={
        "display_name": unique("orphan"),
        "graph": {"nodes": [
            {"id": "start", "component": builtins["trigger"], "function": "manual"},
            {"id": "send", "component": builtins["http-request"], "function": "request",
             "credentials": name, "fields": {"url": "http://127.0.0.1:9/"}},
        ], "edges": [{"source": "start", "target": "send"}]},
    }).json()["name"]
    assert rest.delete(f"/v1/{name}", headers=auth(owner)).status_code == 200
    assert rest.post(f"/v1/{flow}:start", headers=auth(owner), json={}).status_code == 200
    failed = wait_state(rest, owner, flow, "STATE_FAILED", timeout=60)
    assert f"step send: its credentials {name} do not exist" in failed["state_reason"]


def test_the_platform_made_private_master_key_files(platform: Platform) -> None:
    for service in ("iam", "secrets"):
        path = platform.data_dir / f"{service}-master-key"
        assert path.stat().st_mode & 0o777 == 0o600
        (line,) = path.read_text().split()
        assert crypto.Keyring(line).active_id == line.split(":")[0]
