"""Examples (c) and (d) through REST via Envoy: a user starts a flow, and a flow of built-in
components runs message by message over RabbitMQ in real worker processes, with the
executions view agreeing with what arrived."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from oih_cli.platform import Platform
from tests.e2e.conftest import auth, create_tenant_with_admin, unique, wait_state

MESSAGES = 1000


def pipeline(builtins: dict[str, str]) -> dict[str, Any]:
    return {
        "display_name": unique("doubler"),
        "graph": {
            "nodes": [
                {"id": "start", "component": builtins["trigger"], "function": "manual"},
                {"id": "double", "component": builtins["transform"], "function": "transform",
                 "fields": {"expression": "{'n': n, 'doubled': n * 2}"}},
                {"id": "sink", "component": builtins["sink"], "function": "sink"},
            ],
            "edges": [{"source": "start", "target": "double"},
                      {"source": "double", "target": "sink"}],
        },
    }


def sink_lines(platform: Platform, flow: str, step: str) -> list[dict[str, Any]]:
    path = Path(platform.data_dir) / "sinks" / flow.removeprefix("flows/") / f"{step}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_examples_c_and_d_start_a_flow_and_run_1000_messages_through_it(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    token = integrator["token"]
    flow = rest.post("/v1/flows", headers=auth(token), json=pipeline(builtins)).json()
    name = flow["name"]

    # (c) a user starts a flow: STARTING at once, ACTIVE when the orchestrator deployed it.
    started = rest.post(f"/v1/{name}:start", headers=auth(token), json={})
    assert started.status_code == 200, started.text
    assert started.json()["state"] == "STATE_STARTING"
    wait_state(rest, token, name, "STATE_ACTIVE", timeout=60)
    runtime = rest.get(f"/v1/{name}/runtime", headers=auth(token))
    assert runtime.status_code == 200, runtime.text
    assert sorted(w["step_id"] for w in runtime.json()["workers"]) == ["double", "sink", "start"]
    # ACTIVE means every step's worker consumes its queue: the view says RUNNING, not STARTING.
    assert {w["state"] for w in runtime.json()["workers"]} == {"STATE_RUNNING"}

    # (d) execute it 1,000 times; every message reaches the sink, transformed.
    def execute(n: int) -> str:
        reply = rest.post(f"/v1/{name}:execute", headers=auth(token), json={"data": {"n": n}})
        assert reply.status_code == 200, reply.text
        return str(reply.json()["execution"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        executions = list(pool.map(execute, range(MESSAGES)))
    assert len(set(executions)) == MESSAGES

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        arrived = sink_lines(platform, name, "sink")
        if len({line["id"] for line in arrived}) >= MESSAGES:
            break
        time.sleep(0.5)
    unique_arrivals = {line["id"]: line for line in arrived}
    assert len(unique_arrivals) == MESSAGES
    assert sorted(line["data"]["n"] for line in unique_arrivals.values()) == list(range(MESSAGES))
    assert all(line["data"]["doubled"] == 2 * line["data"]["n"]
               for line in unique_arrivals.values())

    # The executions view agrees: every execution succeeded, one message through each step.
    deadline = time.monotonic() + 60
    while True:
        listed = rest.get(f"/v1/{name}/executions", headers=auth(token),
                          params={"page_size": MESSAGES}).json().get("executions", [])
        succeeded = [e for e in listed if e["state"] == "STATE_SUCCEEDED"]
        if len(succeeded) == MESSAGES or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(succeeded) == MESSAGES, {e["state"] for e in listed}
    one = rest.get(f"/v1/{executions[0]}", headers=auth(token))
    assert one.status_code == 200, one.text
    steps = {s["step_id"]: s for s in one.json()["steps"]}
    assert {s: (int(v["messages_in"]), int(v["messages_out"])) for s, v in steps.items()} == {
        "start": (1, 1), "double": (1, 1), "sink": (1, 0)}

    # Stop: workers and queues go away, the flow is INACTIVE again.
    stopped = rest.post(f"/v1/{name}:stop", headers=auth(token), json={})
    assert stopped.json()["state"] == "STATE_STOPPING"
    wait_state(rest, token, name, "STATE_INACTIVE", timeout=60)
    assert rest.get(f"/v1/{name}/runtime", headers=auth(token)).status_code == 404


def test_a_flow_whose_component_cannot_run_fails_with_the_reason(
        rest: httpx.Client, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    token = integrator["token"]
    broken = rest.post("/v1/components", headers=auth(token), json={
        "display_name": "broken", "access": "ACCESS_TENANT",
        "python_entry_point": {"object_reference": "oih_builtins.no_such_module:component"},
        "actions": [{"name": "transform"}]}).json()
    body = pipeline(builtins)
    body["graph"]["nodes"][1]["component"] = broken["name"]
    flow = rest.post("/v1/flows", headers=auth(token), json=body).json()
    rest.post(f"/v1/{flow['name']}:start", headers=auth(token), json={})
    failed = wait_state(rest, token, flow["name"], "STATE_FAILED", timeout=60)
    assert failed["state_reason"]


def test_executions_of_another_tenants_flow_are_404(
        rest: httpx.Client, admin_token: str, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    flow = rest.post("/v1/flows", headers=auth(integrator["token"]),
                     json=pipeline(builtins)).json()
    _, _, stranger = create_tenant_with_admin(rest, admin_token)
    for path in (f"/v1/{flow['name']}/executions", f"/v1/{flow['name']}/runtime",
                 f"/v1/{flow['name']}/deadLetters"):
        assert rest.get(path, headers=auth(stranger)).status_code == 404, path
    assert rest.get(f"/v1/{flow['name']}/executions").status_code == 401


def test_killing_the_orchestrator_and_starting_it_again_reconciles(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    token = integrator["token"]
    keep = rest.post("/v1/flows", headers=auth(token), json=pipeline(builtins)).json()["name"]
    drop = rest.post("/v1/flows", headers=auth(token), json=pipeline(builtins)).json()["name"]
    for flow in (keep, drop):
        rest.post(f"/v1/{flow}:start", headers=auth(token), json={})
    for flow in (keep, drop):
        wait_state(rest, token, flow, "STATE_ACTIVE", timeout=60)
    workers = {w["step_id"]: w["instance"] for w in
               rest.get(f"/v1/{keep}/runtime", headers=auth(token)).json()["workers"]}

    platform.kill("orchestrator")
    try:
        # While it is down: a run of one flow and the stop of the other wait in its event queue.
        execution = rest.post(f"/v1/{keep}:execute", headers=auth(token),
                              json={"data": {"n": 7}}).json()["execution"]
        assert rest.post(f"/v1/{drop}:stop", headers=auth(token),
                         json={}).json()["state"] == "STATE_STOPPING"
    finally:
        platform.restart("orchestrator")

    wait_state(rest, token, drop, "STATE_INACTIVE", timeout=60)
    assert rest.get(f"/v1/{drop}/runtime", headers=auth(token)).status_code == 404
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            line["execution_id"] == execution.rsplit("/", 1)[-1]
            for line in sink_lines(platform, keep, "sink")):
        time.sleep(0.2)
    arrived = [line for line in sink_lines(platform, keep, "sink")
               if line["execution_id"] == execution.rsplit("/", 1)[-1]]
    assert [line["data"]["doubled"] for line in arrived] == [14]
    # The running flow's workers were adopted, not restarted.
    after = {w["step_id"]: w["instance"] for w in
             rest.get(f"/v1/{keep}/runtime", headers=auth(token)).json()["workers"]}
    assert after == workers
    rest.post(f"/v1/{keep}:stop", headers=auth(token), json={})
    wait_state(rest, token, keep, "STATE_INACTIVE", timeout=60)
