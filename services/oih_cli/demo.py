"""The seed scenarios, run through REST via Envoy against a running platform.

(b) a platform admin creates a tenant and its admin; the tenant admin creates a service account;
    the service account exchanges its credentials for a token and calls GET /v1/users/me.
(a) a user creates a flow; (c) starts it; (d) it runs messages over RabbitMQ.
(f) an HMAC-signed webhook starts a flow (ASYNC) and a flow answers one with its `reply` step
    (SYNC).
(g) a scheduled flow: every two seconds the scheduler fires it, its `http-poll` trigger fetches
    a feed the demo serves on DEMO_FEED_HOST and emits only new items, and the step's snapshot
    advances run by run. The platform must admit that address (`oih up --demo` does:
    OIH_EGRESS_ALLOWED_NETWORKS).
Further scenarios join as their services land (see the README).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from oih_cli.rest import Rest


def step(text: str) -> None:
    print(f"  -> {text}", flush=True)


def scenario_b(gateway: Rest, admin_username: str, admin_password: str) -> dict[str, Any]:
    """A user creates a service account (example b); returns what it made."""
    print("(b) a user creates a service account", flush=True)
    admin = gateway.with_token(gateway.post(
        "/v1/login", {"username": admin_username, "password": admin_password})["access_token"])
    step(f"admin {admin_username} logged in")
    tenant = admin.post("/v1/tenants", {"display_name": f"acme-{uuid.uuid4().hex[:6]}"})
    step(f"created tenant {tenant['name']} ({tenant['display_name']})")
    username = f"owner-{uuid.uuid4().hex[:6]}@acme.example"
    password = uuid.uuid4().hex
    user = admin.post("/v1/users", {
        "user": {"username": username, "tenant": tenant["name"], "roles": ["roles/tenant-admin"]},
        "password": password,
    })
    step(f"created tenant admin {user['name']} ({username})")
    tenant_admin = gateway.with_token(gateway.post(
        "/v1/login", {"username": username, "password": password})["access_token"])
    account = tenant_admin.post("/v1/service-accounts", {
        "display_name": "crm sync", "roles": ["roles/service-account"]})
    step(f"tenant admin created {account['name']} (secret shown once)")
    exchanged = gateway.post("/v1/tokens:exchange", {
        "client_id": account["client_id"], "client_secret": account["client_secret"]})
    me = gateway.with_token(exchanged["access_token"]).get("/v1/users/me")
    step(f"service account called /v1/users/me: {me['name']} in {me['tenant']}")
    if me["name"] != account["name"]:
        raise RuntimeError(f"/v1/users/me answered {me['name']}, expected {account['name']}")
    return {"tenant": tenant, "tenant_admin": tenant_admin, "service_account": account}


def scenario_a(tenant_admin: Rest) -> dict[str, Any]:
    """A user creates a flow (example a): components, a two-node flow, list, update by etag."""
    print("(a) a user creates a flow", flush=True)
    trigger = tenant_admin.post("/v1/components", {
        "display_name": "webhook trigger", "access": "ACCESS_TENANT",
        "python_entry_point": {"object_reference": "oih_builtins.trigger:component"},
        "triggers": [{"name": "manual"}]})
    transform = tenant_admin.post("/v1/components", {
        "display_name": "jsonata transform", "access": "ACCESS_TENANT",
        "python_entry_point": {"object_reference": "oih_builtins.transform:component"},
        "actions": [{"name": "transform"}]})
    step(f"registered components {trigger['name']} and {transform['name']}")
    flow = tenant_admin.post("/v1/flows", {
        "display_name": "orders to totals",
        "graph": {
            "nodes": [
                {"id": "start", "component": trigger["name"], "function": "manual"},
                {"id": "total", "component": transform["name"], "function": "transform",
                 "fields": {"expression": "{'order': id, 'total': $sum(items.price)}"}},
            ],
            "edges": [{"source": "start", "target": "total"}],
        },
    })
    step(f"created {flow['name']} ({flow['state']})")
    listed = tenant_admin.get("/v1/flows?filter=state%3DINACTIVE")
    step(f"listed {len(listed.get('flows', []))} inactive flow(s)")
    renamed = tenant_admin.patch(f"/v1/{flow['name']}?update_mask=description",
                                 {"description": "sums order items", "etag": flow["etag"]})
    step(f"updated it with its etag (new etag {renamed['etag']})")
    stale = tenant_admin.call("PATCH", f"/v1/{flow['name']}?update_mask=description",
                              {"description": "lost update", "etag": flow["etag"]})
    step(f"an update with the stale etag answers {stale.status}: {stale.body['message']}")
    if stale.status != 409:
        raise RuntimeError(f"a stale etag answered {stale.status}, expected 409")
    return {"flow": renamed, "components": [trigger, transform]}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def scenarios_c_and_d(user: Rest, messages: int = 20) -> None:
    """A user starts a flow (c); a flow of built-ins runs message by message (d)."""
    print("(c) a user starts a flow", flush=True)

    def builtins() -> dict[str, str] | None:
        listed = user.get("/v1/components?filter=access%3DPUBLIC&page_size=100")
        found = {c["display_name"]: c["name"] for c in listed.get("components", [])}
        return found if {"trigger", "transform", "sink"} <= found.keys() else None

    public = wait_for("the built-in components (the orchestrator registers them)", builtins)
    flow = user.post("/v1/flows", {
        "display_name": "double every number",
        "graph": {
            "nodes": [
                {"id": "start", "component": public["trigger"], "function": "manual"},
                {"id": "double", "component": public["transform"], "function": "transform",
                 "fields": {"expression": "{'n': n, 'doubled': n * 2}"}},
                {"id": "sink", "component": public["sink"], "function": "sink"},
            ],
            "edges": [{"source": "start", "target": "double"},
                      {"source": "double", "target": "sink"}],
        },
    })
    name = flow["name"]
    step(f"created {name}: trigger -> transform -> sink")
    step(f"started it: {user.post(f'/v1/{name}:start', {})['state']}")
    wait_for("ACTIVE", lambda: user.get(f"/v1/{name}")["state"] == "STATE_ACTIVE")
    workers = user.get(f"/v1/{name}/runtime")["workers"]
    states = ", ".join(f"{w['step_id']}={w['state']}" for w in workers)
    step(f"ACTIVE, with workers {states}")

    print(f"(d) the flow runs {messages} messages over RabbitMQ", flush=True)
    executions = [user.post(f"/v1/{name}:execute", {"data": {"n": n}})["execution"]
                  for n in range(messages)]
    step(f"executed it {messages} times")

    def finished() -> list[dict[str, Any]] | None:
        listed = user.get(f"/v1/{name}/executions?page_size={messages}").get("executions", [])
        done = [e for e in listed if e["state"] != "STATE_RUNNING"]
        return listed if len(done) == messages else None

    listed = wait_for("the executions", finished)
    succeeded = sum(e["state"] == "STATE_SUCCEEDED" for e in listed)
    step(f"executions view: {succeeded} of {messages} SUCCEEDED")
    steps = user.get(f"/v1/{executions[0]}")["steps"]
    outputs = next(s for s in steps if s["step_id"] == "double")["output_samples"]
    step(f"the transform step emitted {outputs[0] if outputs else 'nothing'} for n=0")
    step(f"stopped it: {user.post(f'/v1/{name}:stop', {})['state']}")
    wait_for("INACTIVE", lambda: user.get(f"/v1/{name}")["state"] == "STATE_INACTIVE")
    step("INACTIVE: workers, queues and broker users removed")
    if succeeded != messages:
        raise RuntimeError(f"only {succeeded} of {messages} executions succeeded")


def _hmac_key(user: Rest) -> tuple[str, str] | None:
    """A new HMAC secret in the Secrets service: (its name, the key), or None when the
    platform runs no Secrets service."""
    key = secrets.token_urlsafe(32)
    created = user.call("POST", "/v1/secrets", {
        "display_name": "shop webhook key", "type": "TYPE_HMAC_KEY", "value": {"key": key}})
    if created.status in (404, 503):
        return None
    return created.ok()["name"], key


def scenario_f(user: Rest) -> None:
    """Webhooks: a signed POST starts a flow (ASYNC), and a flow answers the caller (SYNC)."""
    print("(f) a webhook starts a flow, and a flow answers it", flush=True)
    public = wait_for("the built-in components", lambda: {
        c["display_name"]: c["name"] for c in user.get(
            "/v1/components?filter=access%3DPUBLIC&page_size=100").get("components", [])})
    secret = _hmac_key(user)
    auth: dict[str, Any] = {}
    if secret is None:
        step("no Secrets service in this build: the hooks run without a signature")
    else:
        auth = {"require_auth": True, "hmac_secret": secret[0], "hmac_header": "x-hmac",
                "hmac_algorithm": "sha256"}
        step(f"created the HMAC key {secret[0]} in the Secrets service")
    flows = {}
    for mode in ("RESPONSE_MODE_ASYNC", "RESPONSE_MODE_SYNC"):
        nodes = [{"id": "start", "component": public["trigger"], "function": "webhook"}]
        edges = []
        if mode == "RESPONSE_MODE_SYNC":
            nodes.append({"id": "answer", "component": public["reply"], "function": "reply",
                          "fields": {"status": 201, "headers": {"x-order-state": "accepted"},
                                     "body": "{'order': order, 'total': $sum(items.price)}"}})
            edges.append({"source": "start", "target": "answer"})
        nodes.append({"id": "sink", "component": public["sink"], "function": "sink"})
        edges.append({"source": nodes[-2]["id"], "target": "sink"})
        flow = user.post("/v1/flows", {
            "display_name": f"shop orders ({mode.rsplit('_', 1)[1].lower()})",
            "graph": {"nodes": nodes, "edges": edges},
            "webhook_settings": {"response_mode": mode, "sync_timeout": "20s", **auth}})
        user.post(f"/v1/{flow['name']}:start", {})
        flows[mode] = flow["name"]
    for name in flows.values():
        def active(name: str = name) -> bool:
            return bool(user.get(f"/v1/{name}")["state"] == "STATE_ACTIVE")
        wait_for("ACTIVE", active)
    body = json.dumps({"order": 90071992547409931, "items": [{"price": 5}, {"price": 7}]}
                      ).encode()
    headers = {"content-type": "application/json"}
    if secret is not None:
        headers["x-hmac"] = hmac.new(secret[1].encode(), body, hashlib.sha256).hexdigest()
        forged = user.raw("POST", _hook(flows["RESPONSE_MODE_ASYNC"]), body,
                          {**headers, "x-hmac": "00" * 32})
        step(f"a wrong signature answers {forged[0]}: {json.loads(forged[2])['message']}")
        if forged[0] != 403:
            raise RuntimeError(f"a wrong signature answered {forged[0]}, expected 403")
    signed = "signed " if secret is not None else ""
    status, _, answer = user.raw("POST", _hook(flows["RESPONSE_MODE_ASYNC"]), body, headers)
    step(f"{signed}POST /hooks/… (ASYNC) answers {status}: {answer.decode()}")
    if status != 200:
        raise RuntimeError(f"the ASYNC webhook answered {status}")
    status, reply_headers, answer = user.raw("POST", _hook(flows["RESPONSE_MODE_SYNC"]), body,
                                             headers)
    step(f"{signed}POST /hooks/… (SYNC) answers {status} "
         f"x-order-state={reply_headers.get('x-order-state')}: {answer.decode()}")
    if status != 201:
        raise RuntimeError(f"the SYNC webhook answered {status}, expected 201")
    execution = user.get(f"/v1/{flows['RESPONSE_MODE_ASYNC']}/executions?page_size=1")
    found = execution.get("executions", [{}])[0]
    step(f"executions view: {found.get('name')} source={found.get('source')}")
    for name in flows.values():
        user.post(f"/v1/{name}:stop", {})


def _hook(flow: str) -> str:
    return f"/hooks/{flow.removeprefix('flows/')}"


#: Where the demo serves the feed its scheduled flow polls: a loopback address apart from
#: 127.0.0.1 (which the egress guard keeps refusing), admitted by `oih up --demo`.
DEMO_FEED_HOST = "127.0.0.2"


@contextmanager
def feed_server(items: list[dict[str, Any]]) -> Iterator[str]:
    """Serve `items` (as it changes) as a JSON list; yields the URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(items).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((DEMO_FEED_HOST, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{DEMO_FEED_HOST}:{server.server_port}/orders"
    finally:
        server.shutdown()
        server.server_close()


def scenario_g(user: Rest) -> None:
    """A scheduled flow with a polling trigger; its snapshot advances run by run."""
    print("(g) a scheduled flow polls a feed; its snapshot advances run by run", flush=True)
    public = {c["display_name"]: c["name"] for c in user.get(
        "/v1/components?filter=access%3DPUBLIC&page_size=100").get("components", [])}
    items: list[dict[str, Any]] = [{"id": 1, "order": "A-1"}, {"id": 2, "order": "A-2"}]
    with feed_server(items) as url:
        flow = user.post("/v1/flows", {
            "display_name": "poll new orders", "cron": "*/2 * * * * *",
            "graph": {
                "nodes": [
                    {"id": "poll", "component": public["http-poll"], "function": "poll",
                     "fields": {"url": url}},
                    {"id": "sink", "component": public["sink"], "function": "sink"},
                ],
                "edges": [{"source": "poll", "target": "sink"}],
            },
        })
        name, flow_id = flow["name"], flow["name"].removeprefix("flows/")
        step(f"created {name}: http-poll ({url}) -> sink, cron '*/2 * * * * *'")
        user.post(f"/v1/{name}:start", {})
        wait_for("ACTIVE", lambda: user.get(f"/v1/{name}")["state"] == "STATE_ACTIVE")
        schedule = user.get(f"/v1/schedules/{flow_id}")
        step(f"schedule {schedule['name']} ({schedule['time_zone']}): next run "
             f"{schedule['next_run_time']}")
        snapshot_path = f"/v1/{name}/steps/poll/snapshot"

        def position(expected: int) -> bool:
            reply = user.call("GET", snapshot_path)
            return reply.status == 200 and reply.body["data"].get("position") == expected

        wait_for("the snapshot at position 2", lambda: position(2))
        step("run 1 emitted orders 1 and 2; snapshot {'position': 2}")
        items.append({"id": 3, "order": "A-3"})
        step("the feed got order 3")
        wait_for("the snapshot at position 3", lambda: position(3))
        fired = user.get(f"/v1/schedules/{flow_id}")
        step(f"a later run emitted only order 3; snapshot {{'position': 3}} "
             f"(last execution {fired['last_execution'].rsplit('/', 1)[-1]})")
        step(f"stopped it: {user.post(f'/v1/{name}:stop', {})['state']}")
        wait_for("INACTIVE", lambda: user.get(f"/v1/{name}")["state"] == "STATE_INACTIVE")


def run(gateway_url: str, admin_username: str, admin_password: str) -> None:
    gateway = Rest(gateway_url)
    made = scenario_b(gateway, admin_username, admin_password)
    if gateway.call("GET", "/v1/flows").status != 503:  # the Flow Repository is running
        scenario_a(made["tenant_admin"])
    if gateway.call("GET", "/v1/flows/-/executions").status != 503:  # the orchestrator too
        scenarios_c_and_d(made["tenant_admin"])
        if gateway.raw("POST", "/hooks/demo-probe", b"{}")[0] != 503:  # and webhooks
            scenario_f(made["tenant_admin"])
    if 503 not in (gateway.call("GET", "/v1/schedules").status,
                   gateway.call("GET", "/v1/flows/-/snapshots").status):  # scheduler, snapshots
        scenario_g(made["tenant_admin"])
    print("all scenarios passed", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oih demo", description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--admin", default=os.environ.get("OIH_IAM_ADMIN_USERNAME",
                                                          "admin@oih.local"))
    parser.add_argument("--password", default=os.environ.get("OIH_IAM_ADMIN_PASSWORD", ""),
                        help="the admin password (default: $OIH_IAM_ADMIN_PASSWORD)")
    args = parser.parse_args(argv)
    if not args.password:
        parser.error("give the admin password (--password or OIH_IAM_ADMIN_PASSWORD)")
    run(args.gateway, args.admin, args.password)
    return 0
