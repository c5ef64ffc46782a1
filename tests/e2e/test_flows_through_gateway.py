"""Example (a) and the flow lifecycle through REST via Envoy, against the real IAM, Component
Repository and Flow Repository processes and the real RabbitMQ; plus revocation at once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pika
import pytest

from oih.events.v1 import event_pb2
from oih_cli.platform import Platform
from tests.e2e.conftest import (
    EXCHANGE,
    PASSWORD,
    auth,
    create_tenant_with_admin,
    login,
    unique,
    wait_state,
)


def component_body(name: str, *functions: str, access: str = "ACCESS_PRIVATE") -> dict[str, Any]:
    return {
        "display_name": name,
        "description": f"{name} for the e2e suite",
        "version": "1.0.0",
        "access": access,
        "python_entry_point": {"object_reference": f"oih_builtins.{name}:component"},
        "actions": [{"name": f} for f in functions],
    }


def two_node_flow(trigger: str, transform: str) -> dict[str, Any]:
    return {
        "display_name": unique("orders"),
        "description": "webhook orders, reshaped",
        "graph": {
            "nodes": [
                {"id": "start", "component": trigger, "function": "manual"},
                {"id": "reshape", "component": transform, "function": "transform",
                 "fields": {"expression": "{'total': $sum(items.price)}"}},
            ],
            "edges": [{"source": "start", "target": "reshape"}],
        },
    }


@pytest.fixture(scope="module")
def components(rest: httpx.Client, integrator: dict[str, str]) -> dict[str, str]:
    token = integrator["token"]
    trigger = rest.post("/v1/components", headers=auth(token),
                        json={**component_body("trigger"), "actions": [],
                              "triggers": [{"name": "manual"}]})
    transform = rest.post("/v1/components", headers=auth(token),
                          json=component_body("transform", "transform"))
    assert trigger.status_code == 200, trigger.text
    assert transform.status_code == 200, transform.text
    return {"trigger": trigger.json()["name"], "transform": transform.json()["name"]}


@pytest.fixture
def flow_events(platform: Platform) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    """A test queue bound to every flow event of this run's exchange."""
    with pika.BlockingConnection(pika.URLParameters(platform.rabbitmq_url)) as connection:
        channel = connection.channel()
        channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, EXCHANGE, routing_key="oih.flow.#")
        channel.test_queue = queue  # type: ignore[attr-defined]
        yield channel


def next_event(channel: Any, event_type: str, timeout: float = 10.0) -> event_pb2.Event:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        method, _properties, body = channel.basic_get(channel.test_queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        event = event_pb2.Event.FromString(body)
        if event.type == event_type:
            return event
    raise AssertionError(f"no {event_type} event within {timeout}s")


def test_example_a_create_list_update_with_etag(
        rest: httpx.Client, integrator: dict[str, str], components: dict[str, str]) -> None:
    token = integrator["token"]
    created = rest.post("/v1/flows", headers=auth(token),
                        json=two_node_flow(components["trigger"], components["transform"]))
    assert created.status_code == 200, created.text
    flow = created.json()
    assert flow["state"] == "STATE_INACTIVE"
    assert flow["tenant"] == integrator["tenant"]

    listed = rest.get("/v1/flows", headers=auth(token), params={"filter": "state=INACTIVE"})
    assert listed.status_code == 200, listed.text
    assert flow["name"] in [f["name"] for f in listed.json()["flows"]]

    renamed = rest.patch(f"/v1/{flow['name']}", headers=auth(token), json={
        "display_name": "orders, renamed", "etag": flow["etag"]},
        params={"update_mask": "display_name"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["display_name"] == "orders, renamed"
    assert renamed.json()["etag"] != flow["etag"]

    stale = rest.patch(f"/v1/{flow['name']}", headers=auth(token), json={
        "display_name": "lost update", "etag": flow["etag"]}, params={"update_mask": "display_name"})
    assert stale.status_code == 409, stale.text
    assert stale.json()["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda f: f["graph"]["nodes"].append(dict(f["graph"]["nodes"][0])),
         "flow.graph.nodes[2].id"),
        (lambda f: f["graph"]["edges"].append({"source": "start", "target": "nowhere"}),
         "flow.graph.edges[1].target"),
        (lambda f: f["graph"]["edges"].append({"source": "reshape", "target": "start"}),
         "flow.graph"),
        (lambda f: f.update(cron="every tuesday"), "flow.cron"),
        (lambda f: f["graph"]["nodes"][1].update(function="no-such-function"),
         "flow.graph.nodes[1].function"),
        (lambda f: f["graph"]["nodes"][1].update(component="components/does-not-exist"),
         "flow.graph.nodes[1].component"),
        (lambda f: f["graph"]["edges"][0].update(condition="$$$ not jsonata ((("),
         "flow.graph.edges[0].condition"),
    ],
    ids=["duplicate node", "edge to nowhere", "cycle", "bad cron", "unknown function",
         "unknown component", "bad condition"],
)
def test_invalid_flows_are_400_naming_the_field(
        rest: httpx.Client, integrator: dict[str, str], components: dict[str, str],
        change: Any, field: str) -> None:
    body = two_node_flow(components["trigger"], components["transform"])
    change(body)
    reply = rest.post("/v1/flows", headers=auth(integrator["token"]), json=body)
    assert reply.status_code == 400, reply.text
    violations = [v["field"] for d in reply.json()["details"]
                  for v in d.get("field_violations", [])]
    assert any(v.startswith(field) for v in violations), violations


def test_start_and_stop_publish_events_and_the_orchestrator_moves_the_state(
        rest: httpx.Client, integrator: dict[str, str], components: dict[str, str],
        flow_events: Any) -> None:
    token = integrator["token"]
    flow = rest.post("/v1/flows", headers=auth(token), json=two_node_flow(
        components["trigger"], components["transform"])).json()

    started = rest.post(f"/v1/{flow['name']}:start", headers=auth(token), json={})
    assert started.status_code == 200, started.text
    assert started.json()["state"] == "STATE_STARTING"
    starting = next_event(flow_events, "oih.flow.starting")
    assert starting.subject == flow["name"]
    assert starting.tenant == integrator["tenant"]
    assert next_event(flow_events, "oih.flow.started", timeout=60).subject == flow["name"]
    wait_state(rest, token, flow["name"], "STATE_ACTIVE")

    # A running flow cannot be changed or deleted.
    locked = rest.delete(f"/v1/{flow['name']}", headers=auth(token))
    assert locked.status_code == 400, locked.text
    assert "stop it first" in locked.json()["message"] or locked.json()["message"]

    stopped = rest.post(f"/v1/{flow['name']}:stop", headers=auth(token), json={})
    assert stopped.json()["state"] == "STATE_STOPPING"
    assert next_event(flow_events, "oih.flow.stopping").subject == flow["name"]
    assert next_event(flow_events, "oih.flow.stopped", timeout=60).subject == flow["name"]
    wait_state(rest, token, flow["name"], "STATE_INACTIVE")
    assert rest.delete(f"/v1/{flow['name']}", headers=auth(token)).status_code == 200


def test_other_tenants_flows_and_components_are_404(
        rest: httpx.Client, admin_token: str, integrator: dict[str, str],
        components: dict[str, str]) -> None:
    flow = rest.post("/v1/flows", headers=auth(integrator["token"]), json=two_node_flow(
        components["trigger"], components["transform"])).json()
    _, _, stranger = create_tenant_with_admin(rest, admin_token)
    for method, path, body in [
        ("GET", f"/v1/{flow['name']}", None),
        ("PATCH", f"/v1/{flow['name']}?update_mask=display_name", {"display_name": "mine"}),
        ("DELETE", f"/v1/{flow['name']}", None),
        ("POST", f"/v1/{flow['name']}:start", {}),
        ("GET", f"/v1/{components['transform']}", None),
        ("PATCH", f"/v1/{components['transform']}?update_mask=description",
         {"description": "mine"}),
        ("DELETE", f"/v1/{components['transform']}", None),
    ]:
        reply = rest.request(method, path, headers=auth(stranger),
                             content=None if body is None else json.dumps(body))
        assert reply.status_code == 404, (method, path, reply.text)


def test_disabled_users_token_is_refused_by_every_service_within_a_second(
        rest: httpx.Client, integrator: dict[str, str]) -> None:
    username = f"{unique('leaver')}@acme.example"
    user = rest.post("/v1/users", headers=auth(integrator["tenant_admin"]), json={
        "user": {"username": username, "roles": ["roles/integrator"]}, "password": PASSWORD})
    token = login(rest, username, PASSWORD)
    paths = ["/v1/users/me", "/v1/components", "/v1/flows"]
    for path in paths:
        assert rest.get(path, headers=auth(token)).status_code == 200, path

    disabled = rest.patch(f"/v1/{user.json()['name']}", headers=auth(integrator["tenant_admin"]),
                          json={"user": {"state": "STATE_DISABLED"}},
                          params={"update_mask": "state"})
    assert disabled.status_code == 200, disabled.text
    deadline = time.monotonic() + 1.0
    refused: set[str] = set()
    while time.monotonic() < deadline and len(refused) < len(paths):
        refused |= {p for p in paths if rest.get(p, headers=auth(token)).status_code == 401}
    assert refused == set(paths)
