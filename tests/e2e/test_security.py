"""What an attacker with a tenant account cannot do, tried from outside through Envoy against the
real platform processes (README "Guarantees → Security" points here, test by test)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
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
