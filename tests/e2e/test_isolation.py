"""The tenant-isolation matrix: every resource type of every running service, times every REST method
bound to one of its objects (get, list, update, delete, start, stop, execute, replay, reset…),
called by the administrator of another tenant through Envoy. Each call must answer exactly as
for an object that does not exist (so nothing tells the object is there — NOT_FOUND, or the same
PERMISSION_DENIED a missing permission gives for any name), no list shows the object, and every
object is unchanged afterwards.

The matrix is built from the contract (every REST binding in the descriptor set), so a new
RPC is attacked as soon as it exists; a resource type of a running service that the fixture
does not create fails the test instead of being skipped.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from oih_gateway import layout
from oih_gateway.render import Rpc, read_rpcs
from tests.e2e.conftest import (
    E2E_SERVICES,
    PASSWORD,
    auth,
    create_tenant_with_admin,
    login,
    unique,
    wait_state,
)

pytestmark = pytest.mark.attacks

#: `{name=flows/*/executions/*}` → ("name", "flows/*/executions/*")
VARIABLE = re.compile(r"\{([a-z_.]+)=([^}]+)\}")
#: Fields that change by themselves while the matrix runs (a running flow's workers report).
VOLATILE = {"update_time", "workers", "steps", "state", "end_time", "messages_in",
            "messages_out", "heartbeat_time", "observe_time", "instance", "restarts"}


@dataclass(frozen=True)
class Call:
    rpc: str
    method: str
    template: str
    pattern: str


def running_calls() -> list[Call]:
    """Every REST binding of a running service that addresses one object."""
    found = []
    for rpc in read_rpcs(layout.DESCRIPTOR_SET.read_bytes()):
        if layout.package_of(rpc.service).removeprefix("oih.") not in E2E_SERVICES:
            continue
        if rpc.public:
            # No token, no tenant: a public RPC (webhooks) checks the flow's own
            # authentication; its tenant rules are tested in tests/e2e/test_webhooks.py.
            continue
        for binding in rpc.http:
            variable = VARIABLE.search(binding.template)
            if variable:
                found.append(Call(rpc.name, binding.method, binding.template, variable.group(2)))
    return found


def collection_lists() -> list[tuple[str, Rpc]]:
    """`GET /v1/<collection>` bindings of running services (lists without a parent)."""
    found = []
    for rpc in read_rpcs(layout.DESCRIPTOR_SET.read_bytes()):
        if layout.package_of(rpc.service).removeprefix("oih.") not in E2E_SERVICES:
            continue
        for binding in rpc.http:
            if (binding.method == "GET" and rpc.name.startswith("List")
                    and "{" not in binding.template):
                found.append((binding.template, rpc))
    return found


def fill(template: str, name: str) -> str:
    return VARIABLE.sub(name, template, count=1)


def missing_twin(name: str) -> str:
    """A well-formed name of the same type that does not exist: the last id zeroed."""
    parts = name.split("/")
    index = max(i for i, part in enumerate(parts) if i % 2 == 1)
    parts[index] = re.sub(r"[A-Za-z0-9]", "0", parts[index])
    return "/".join(parts)


def stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: stable(v) for k, v in sorted(value.items()) if k not in VOLATILE}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


@pytest.fixture(scope="module")
def victim(rest: httpx.Client, admin_token: str, builtins: dict[str, str]) -> dict[str, Any]:
    """Tenant A with one object of every resource type, by resource pattern."""
    tenant, admin_user, admin = create_tenant_with_admin(rest, admin_token)

    def created(reply: httpx.Response) -> dict[str, Any]:
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    username = f"{unique('member')}@victim.example"
    user = created(rest.post("/v1/users", headers=auth(admin), json={
        "user": {"username": username, "roles": ["roles/integrator"]}, "password": PASSWORD}))
    role = created(rest.post("/v1/roles", headers=auth(admin), json={
        "display_name": unique("role"), "permissions": ["flows.read"]}))
    account = created(rest.post("/v1/service-accounts", headers=auth(admin), json={
        "display_name": unique("robot"), "roles": ["roles/integrator"]}))
    component = created(rest.post("/v1/components", headers=auth(admin), json={
        "display_name": unique("private"), "python_entry_point": {
            "object_reference": "oih_builtins.log:component"}, "actions": [{"name": "log"}]}))
    secret = created(rest.post("/v1/secrets", headers=auth(admin), json={
        "display_name": unique("key"), "type": "TYPE_API_KEY",
        "value": {"api_key": "of tenant A"}}))
    # A running flow whose second step always fails (an internal URL): it has a runtime, an
    # execution and a dead letter.
    # A yearly cron (it does not fire while the matrix runs) gives the flow a schedule.
    flow = created(rest.post("/v1/flows", headers=auth(admin), json={
        "display_name": unique("victim"), "cron": "0 0 1 1 *", "graph": {"nodes": [
            {"id": "start", "component": builtins["trigger"], "function": "manual"},
            {"id": "call", "component": builtins["http-request"], "function": "request",
             "fields": {"url": "http://127.0.0.1:9/", "method": "GET"}}],
            "edges": [{"source": "start", "target": "call"}]}}))
    assert rest.post(f"/v1/{flow['name']}:start", headers=auth(admin), json={}).status_code == 200
    wait_state(rest, admin, flow["name"], "STATE_ACTIVE", timeout=60)
    execution = created(rest.post(f"/v1/{flow['name']}:execute", headers=auth(admin),
                                  json={"data": {"secret": "of tenant A"}}))["execution"]
    deadline = time.monotonic() + 60
    while True:
        letters = rest.get(f"/v1/{flow['name']}/deadLetters", headers=auth(admin)).json()
        letters = letters.get("dead_letters", [])
        if letters or time.monotonic() > deadline:
            assert letters, "the failing step produced no dead letter"
            break
        time.sleep(0.3)
    snapshot_name = f"{flow['name']}/steps/call/snapshot"
    created(rest.patch(f"/v1/{snapshot_name}", headers=auth(admin), params={
        "allow_missing": "true"}, json={"data": {"position": "of tenant A"}}))
    objects = {
        "tenants/*": tenant,
        "users/*": user["name"],
        "roles/*": role["name"],
        "service-accounts/*": account["name"],
        "components/*": component["name"],
        "secrets/*": secret["name"],
        "flows/*": flow["name"],
        "flows/*/runtime": f"{flow['name']}/runtime",
        "flows/*/executions/*": execution,
        "flows/*/deadLetters/*": letters[0]["name"],
        "schedules/*": f"schedules/{flow['name'].removeprefix('flows/')}",
        "flows/*/steps/*/snapshot": snapshot_name,
    }
    yield {"admin": admin, "admin_user": admin_user, "objects": objects,
           "user_token": login(rest, username, PASSWORD)}
    rest.post(f"/v1/{flow['name']}:stop", headers=auth(admin), json={})


@pytest.fixture(scope="module")
def attacker(rest: httpx.Client, admin_token: str) -> str:
    """The administrator of tenant B: every permission a tenant can hold."""
    return create_tenant_with_admin(rest, admin_token)[2]


def snapshot(rest: httpx.Client, token: str, objects: dict[str, str]) -> dict[str, Any]:
    seen = {}
    for pattern, name in objects.items():
        reply = rest.get(f"/v1/{name}", headers=auth(token))
        assert reply.status_code == 200, (pattern, reply.text)
        seen[pattern] = stable(reply.json())
    return seen


def attack(rest: httpx.Client, token: str, call: Call, name: str) -> httpx.Response:
    path = fill(call.template, name)
    if call.method == "PATCH":
        return rest.patch(path, headers=auth(token), params={"update_mask": "display_name"},
                          json={"display_name": "taken over"})
    if call.method in ("POST",):
        return rest.post(path, headers=auth(token), json={})
    return rest.request(call.method, path, headers=auth(token))


def test_the_matrix_covers_every_resource_type(victim: dict[str, Any]) -> None:
    patterns = {call.pattern for call in running_calls()}
    assert patterns <= victim["objects"].keys(), (
        f"resource types without an object in the matrix: {patterns - victim['objects'].keys()}")


def test_another_tenant_cannot_touch_any_object(
        rest: httpx.Client, victim: dict[str, Any], attacker: str) -> None:
    objects = victim["objects"]
    before = snapshot(rest, victim["admin"], objects)
    letters_before = rest.get(f"/v1/{objects['flows/*']}/deadLetters",
                              headers=auth(victim["admin"])).json()
    tried = []
    for call in running_calls():
        name = objects[call.pattern]
        reply = attack(rest, attacker, call, name)
        twin = attack(rest, attacker, call, missing_twin(name))
        tried.append((call.rpc, call.method, reply.status_code))
        assert reply.status_code in (403, 404), (call, reply.text)
        assert reply.headers["content-type"].startswith("application/json"), (call, reply.text)
        # Exactly what a name that does not exist gets: the answer tells nothing.
        assert (reply.status_code, reason_of(reply)) == (twin.status_code, reason_of(twin)), (
            call, reply.text, twin.text)
        assert name not in twin.text
    assert len({rpc for rpc, _, _ in tried}) >= 25, tried

    assert snapshot(rest, victim["admin"], objects) == before
    assert rest.get(f"/v1/{objects['flows/*']}/deadLetters",
                    headers=auth(victim["admin"])).json() == letters_before
    # Still working: the victim's member logs in and sees its flow.
    assert rest.get(f"/v1/{objects['flows/*']}",
                    headers=auth(victim["user_token"])).status_code == 200


def reason_of(reply: httpx.Response) -> str:
    for detail in reply.json().get("details", []):
        if "reason" in detail:
            return str(detail["reason"])
    return ""


def test_no_list_shows_another_tenants_objects(
        rest: httpx.Client, victim: dict[str, Any], attacker: str) -> None:
    objects = victim["objects"]
    tenant = objects["tenants/*"]
    for template, rpc in collection_lists():
        for params in ({"page_size": 1000}, {"filter": f'tenant="{tenant}"'},
                       {"filter": f'owner="{victim["admin_user"]}"'}):
            reply = rest.get(template, headers=auth(attacker), params=params)
            assert reply.status_code in (200, 400, 403), (rpc.name, params, reply.text)
            for name in objects.values():
                assert name not in reply.text, (rpc.name, params, name)


def test_another_tenants_token_cannot_be_revoked(
        rest: httpx.Client, victim: dict[str, Any], attacker: str) -> None:
    token = victim["user_token"]
    reply = rest.post("/v1/tokens:revoke", headers=auth(attacker), json={"token": token})
    assert reply.status_code in (400, 403, 404), reply.text
    assert rest.get("/v1/users/me", headers=auth(token)).status_code == 200
    introspected = rest.post("/v1/tokens:introspect", headers=auth(attacker),
                             json={"token": token})
    assert introspected.status_code in (200, 403, 404), introspected.text
    if introspected.status_code == 200:  # an active token of another tenant reads as inactive
        assert not introspected.json().get("active"), introspected.text
