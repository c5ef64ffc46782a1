"""What an attacker with a tenant account cannot do, tried from outside through Envoy against the
real platform processes (README "Guarantees → Security" points here, test by test)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest

from oih_cli.platform import Platform
from tests.e2e.conftest import (
    ADMIN,
    ADMIN_PASSWORD,
    PASSWORD,
    auth,
    create_tenant_with_admin,
    login,
    unique,
    wait_state,
)

DEEP = "@@deep@@"


def nested(levels: int) -> str:
    """A JSON object `levels` objects deep, as text: {"a": {"a": … {"leaf": 1}}} (the json
    module cannot write 3,000 levels)."""
    return '{"a":' * (levels - 1) + '{"leaf":1}' + "}" * (levels - 1)


def post_deep(rest: httpx.Client, path: str, token: str, body: dict[str, Any],
              levels: int) -> httpx.Response:
    """POST `body` with the string DEEP in it replaced by JSON `levels` deep."""
    text = json.dumps(body).replace(json.dumps(DEEP), nested(levels))
    return rest.post(path, headers={**auth(token), "content-type": "application/json"},
                     content=text)


def violations(reply: httpx.Response) -> list[str]:
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"].startswith("application/json"), reply.text
    return [v["field"] for d in reply.json().get("details", [])
            for v in d.get("field_violations", [])]


#: From about 95 levels on, Envoy's transcoder refuses the JSON itself (its recursion limit is
#: 100 message levels), with a 400 naming the key where it stopped; below, the service names
#: the field.
ENVOY_LIMIT = 95


def refused_as_too_deep(reply: httpx.Response, levels: int, field: str) -> None:
    found = violations(reply)
    if levels < ENVOY_LIMIT:
        assert found == [field], reply.text
        assert "nested deeper than" in reply.json()["message"], reply.text
    else:
        assert "too deep" in reply.json()["message"], reply.text


# --------------------------------------------------------------------------- deep JSON

@pytest.mark.parametrize("levels", [25, 40, 60, 90, 100, 3000])
def test_deep_json_answers_400_naming_the_field_at_every_depth(
        rest: httpx.Client, integrator: dict[str, str], builtins: dict[str, str],
        levels: int) -> None:
    token = integrator["token"]
    deep = DEEP
    flow = {"display_name": unique("deep"), "graph": {"nodes": [
        {"id": "start", "component": builtins["trigger"], "function": "manual"},
        {"id": "t", "component": builtins["transform"], "function": "transform",
         "fields": {"expression": "$", "extra": deep}}],
        "edges": [{"source": "start", "target": "t"}]}}
    reply = post_deep(rest, "/v1/flows", token, flow, levels)
    refused_as_too_deep(reply, levels, "flow.graph.nodes[1].fields")

    component = {"display_name": unique("deep"), "python_entry_point": {
        "object_reference": "oih_builtins.log:component"},
        "actions": [{"name": "log", "config_schema": {"type": "object", "properties": deep}}]}
    reply = post_deep(rest, "/v1/components", token, component, levels)
    refused_as_too_deep(reply, levels, "component.actions[0].config_schema")

    created = rest.post("/v1/flows", headers=auth(token), json={
        "display_name": unique("shallow"), "graph": flow["graph"] | {"nodes": [
            flow["graph"]["nodes"][0], {**flow["graph"]["nodes"][1], "fields": {
                "expression": "$"}}]}})
    assert created.status_code == 200, created.text
    reply = post_deep(rest, f"/v1/{created.json()['name']}:execute", token, {"data": deep},
                      levels)
    refused_as_too_deep(reply, levels, "data")


def test_json_within_the_limit_is_accepted(rest: httpx.Client, integrator: dict[str, str],
                                           builtins: dict[str, str]) -> None:
    component = {"display_name": unique("nested"), "python_entry_point": {
        "object_reference": "oih_builtins.log:component"},
        "actions": [{"name": "log", "config_schema": {"type": "object", "default": json.loads(nested(22))}}]}
    reply = rest.post("/v1/components", headers=auth(integrator["token"]), json=component)
    assert reply.status_code == 200, reply.text


# --------------------------------------------------------------------------- SSRF

class CountingServer(ThreadingHTTPServer):
    hits = 0


@pytest.fixture
def loopback_server() -> Iterator[CountingServer]:
    """An HTTP server on loopback that counts the requests it gets."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.hits += 1
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = CountingServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def dead_letters(rest: httpx.Client, token: str, flow: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        found = rest.get(f"/v1/{flow}/deadLetters", headers=auth(token)).json()
        letters = found.get("dead_letters", found.get("deadLetters", []))
        if len(letters) >= count or time.monotonic() > deadline:
            assert len(letters) >= count, found
            return list(letters)
        time.sleep(0.3)


def test_a_flow_cannot_reach_the_platform_internals(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str], loopback_server: CountingServer) -> None:
    """http-request to Envoy's admin interface, to a loopback server and to the metadata
    address: each message is refused (dead-lettered at once, no retry), nothing is contacted."""
    token = integrator["token"]
    targets = {"admin": f"http://127.0.0.1:{platform.admin_port}/ready",
               "local": f"http://localhost:{loopback_server.server_port}/",
               "metadata": "http://169.254.169.254/latest/meta-data/"}
    nodes: list[dict[str, Any]] = [
        {"id": "start", "component": builtins["trigger"], "function": "manual"}]
    for step, url in targets.items():
        nodes.append({"id": step, "component": builtins["http-request"], "function": "request",
                      "fields": {"url": url, "method": "GET", "timeout": 5}})
    flow = rest.post("/v1/flows", headers=auth(token), json={
        "display_name": unique("ssrf"), "graph": {
            "nodes": nodes, "edges": [{"source": "start", "target": s} for s in targets]}})
    assert flow.status_code == 200, flow.text
    name = flow.json()["name"]
    assert rest.post(f"/v1/{name}:start", headers=auth(token), json={}).status_code == 200
    wait_state(rest, token, name, "STATE_ACTIVE", timeout=60)
    try:
        executed = rest.post(f"/v1/{name}:execute", headers=auth(token), json={"data": {}})
        assert executed.status_code == 200, executed.text
        letters = dead_letters(rest, token, name, len(targets))
        assert sorted(d["step_id"] for d in letters) == sorted(targets)
        for letter in letters:
            assert letter["error"]["error_type"] == "EgressRefused", letter
            assert "internal address" in letter["error"]["message"], letter
            assert int(letter["error"].get("attempt", 1)) == 1  # refused, not retried
        assert loopback_server.hits == 0
    finally:
        rest.post(f"/v1/{name}:stop", headers=auth(token), json={})


# --------------------------------------------------------------------------- accounts

def test_login_lockout_does_not_tell_which_usernames_exist(
        rest: httpx.Client, admin_token: str) -> None:
    tenant = rest.post("/v1/tenants", json={"display_name": unique("lock")},
                       headers=auth(admin_token)).json()["name"]
    existing = f"{unique('real')}@acme.example"
    created = rest.post("/v1/users", headers=auth(admin_token), json={
        "user": {"username": existing, "tenant": tenant}, "password": PASSWORD})
    assert created.status_code == 200, created.text

    def answers(username: str) -> list[tuple[int, str]]:
        seen = []
        for _ in range(7):
            reply = rest.post("/v1/login", json={"username": username,
                                                 "password": "not the password"})
            seen.append((reply.status_code, reply.json()["message"]))
        return seen

    from_existing = answers(existing)
    assert from_existing == answers(f"{unique('ghost')}@acme.example")
    assert [status for status, _ in from_existing] == [401] * 5 + [429] * 2


def test_a_tenant_cannot_make_another_tenant_an_owner_of_its_component(
        rest: httpx.Client, admin_token: str) -> None:
    other, _, other_token = create_tenant_with_admin(rest, admin_token)
    _, _, token = create_tenant_with_admin(rest, admin_token)
    component = {"display_name": unique("gift"), "access": "ACCESS_TENANT",
                 "python_entry_point": {"object_reference": "oih_builtins.log:component"},
                 "actions": [{"name": "log"}],
                 "owners": [{"id": other, "type": "OWNER_TYPE_TENANT"}]}
    reply = rest.post("/v1/components", headers=auth(token), json=component)
    assert violations(reply) == ["component.owners[0].id"]
    created = rest.post("/v1/components", headers=auth(token),
                        json={**component, "owners": []})
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    patched = rest.patch(f"/v1/{name}", headers=auth(token), params={"update_mask": "owners"},
                         json={"owners": [{"id": other, "type": "OWNER_TYPE_TENANT"}]})
    assert violations(patched) == ["component.owners[0].id"]
    assert rest.get(f"/v1/{name}", headers=auth(other_token)).status_code == 404


def test_deleting_a_service_account_stops_the_flows_it_alone_owned(
        rest: httpx.Client, admin_token: str, builtins: dict[str, str]) -> None:
    _, _, owner = create_tenant_with_admin(rest, admin_token)
    account = rest.post("/v1/service-accounts", headers=auth(owner), json={
        "display_name": unique("robot"), "roles": ["roles/integrator"]})
    assert account.status_code == 200, account.text
    robot = rest.post("/v1/tokens:exchange", json={
        "client_id": account.json()["client_id"],
        "client_secret": account.json()["client_secret"]}).json()["access_token"]
    flow = rest.post("/v1/flows", headers=auth(robot), json={
        "display_name": unique("robot-flow"), "graph": {"nodes": [
            {"id": "start", "component": builtins["trigger"], "function": "manual"},
            {"id": "sink", "component": builtins["sink"], "function": "sink"}],
            "edges": [{"source": "start", "target": "sink"}]}})
    assert flow.status_code == 200, flow.text
    name = flow.json()["name"]
    assert [o["id"] for o in flow.json()["owners"]] == [account.json()["name"]]
    assert rest.post(f"/v1/{name}:start", headers=auth(robot), json={}).status_code == 200
    wait_state(rest, owner, name, "STATE_ACTIVE", timeout=60)

    deleted = rest.delete(f"/v1/{account.json()['name']}", headers=auth(owner))
    assert deleted.status_code == 200, deleted.text
    orphan = wait_state(rest, owner, name, "STATE_INACTIVE", timeout=60)
    assert orphan.get("owners", []) == []


# --------------------------------------------------------------------------- signing keys

def test_key_rotation_never_breaks_a_new_login(rest: httpx.Client, admin_token: str) -> None:
    """Logins right after `signingKeys:rotate` and across the switch to the new key: every new
    token is accepted by the gateway at once (the key was in the JWKS before it signed)."""
    old_kid = jwt.get_unverified_header(admin_token)["kid"]
    rotated = rest.post("/v1/signingKeys:rotate", headers=auth(admin_token), json={})
    assert rotated.status_code == 200, rotated.text
    new_kid = rotated.json()["key_id"]
    kids = set()
    deadline = time.monotonic() + 40
    while new_kid not in kids and time.monotonic() < deadline:
        token = login(rest, ADMIN, ADMIN_PASSWORD)
        kids.add(jwt.get_unverified_header(token)["kid"])
        me = rest.get("/v1/users/me", headers=auth(token))
        assert me.status_code == 200, (jwt.get_unverified_header(token), me.text)
        time.sleep(0.2)
    assert kids == {old_kid, new_kid}


# --------------------------------------------------------------------------- protocol edges

def test_http_header_names_grpc_does_not_allow_are_dropped(
        rest: httpx.Client, integrator: dict[str, str]) -> None:
    """`+`, `|`, `~`… are legal in HTTP header names but not in gRPC metadata: forwarded, the
    service's gRPC server failed the call (500)."""
    for name in ("+", "x|y", "a~b", "Odd!Name"):
        reply = rest.get("/v1/components", headers={**auth(integrator["token"]), name: "1"})
        assert reply.status_code == 200, (name, reply.text)
