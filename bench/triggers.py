"""Trigger intake: executions per second from 16 concurrent REST callers until the sink, as a
ratio to the same flow's data-plane throughput measured in this run.

    python -m bench.triggers [--executions 3000] [--callers 16]

Runs the real platform (IAM, components, flows, orchestrator, webhooks, Envoy; free ports, a
temporary directory) on the configured RabbitMQ, creates the flow `trigger → sink`, starts it,
and measures three ways of feeding it the same number of messages, each timed from the first
request until the last message is written by the sink:
- baseline: the data plane alone — messages published straight to the flow's first step with
  pika (what the workers can move);
- `POST /v1/flows/{id}:execute` through Envoy (JWT, transcoding, the Flow Repository, the
  orchestrator's StartExecution with its confirmed publish) from `--callers` threads;
- `POST /hooks/{id}` through Envoy (the webhooks service, StartExecution) likewise.
The goal is a ratio of at least 0.5 for both.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pika

from bench.common import free_port, report
from oih_builtins.sink import sink_path
from oih_cli.platform import Platform
from oih_dataplane import envelope, topology
from oih_runtime.settings import DEFAULT_PORTS
from oih_sdk import Message

ADMIN, PASSWORD = "admin@bench.test", "bench-admin-password"


def _token(rest: httpx.Client) -> str:
    admin = rest.post("/v1/login", json={"username": ADMIN, "password": PASSWORD}).json()
    return str(admin["access_token"])


def _flow(rest: httpx.Client, token: str) -> str:
    headers = {"authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 60
    while True:
        found = rest.get("/v1/components", headers=headers,
                         params={"filter": "access=PUBLIC", "page_size": 100}).json()
        names = {c["display_name"]: c["name"] for c in found.get("components", [])}
        if {"trigger", "sink"} <= names.keys():
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the built-in components did not appear")
        time.sleep(0.2)
    flow = rest.post("/v1/flows", headers=headers, json={
        "display_name": "intake", "graph": {
            "nodes": [{"id": "start", "component": names["trigger"], "function": "webhook"},
                      {"id": "sink", "component": names["sink"], "function": "sink"}],
            "edges": [{"source": "start", "target": "sink"}]}}).json()
    name = str(flow["name"])
    rest.post(f"/v1/{name}:start", headers=headers, json={})
    while rest.get(f"/v1/{name}", headers=headers).json()["state"] != "STATE_ACTIVE":
        if time.monotonic() > deadline:
            raise RuntimeError("the flow did not become ACTIVE")
        time.sleep(0.2)
    return name


def _wait_sink(path: Path, total: int, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or sum(1 for _ in path.open()) < total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the sink did not receive {total} messages in {timeout}s")
        time.sleep(0.05)


def data_plane(url: str, flow_id: str, count: int, sink: Path, already: int) -> float:
    messages = [Message(data={"n": n}, id=str(uuid.uuid4()), flow_id=flow_id, step_id="start",
                        execution_id=f"raw{n}") for n in range(count)]
    encoded = [(envelope.encode(m), envelope.properties_of(m)) for m in messages]
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        started = time.monotonic()
        for body, properties in encoded:
            channel.basic_publish(topology.exchange_name(flow_id), topology.input_key("start"),
                                  body, properties)
        _wait_sink(sink, already + count)
    return count / (time.monotonic() - started)


def rest_callers(base_url: str, callers: int, count: int, request: Callable[[httpx.Client, int],
                 httpx.Response], sink: Path, already: int) -> float:
    failures: list[str] = []
    per_caller = [range(i, count, callers) for i in range(callers)]
    clients = [httpx.Client(base_url=base_url, timeout=60) for _ in range(callers)]

    def run(index: int) -> None:
        for n in per_caller[index]:
            answer = request(clients[index], n)
            if answer.status_code != 200:
                failures.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(callers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted = time.monotonic() - started
    _wait_sink(sink, already + count)
    elapsed = time.monotonic() - started
    for client in clients:
        client.close()
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    print(f"  ({count} accepted in {accepted:.1f}s = {count / accepted:,.0f}/s; "
          f"at the sink after {elapsed:.1f}s)")
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=3000)
    parser.add_argument("--callers", type=int, default=16)
    args = parser.parse_args()
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        platform = Platform(
            data_dir=Path(tmp), gateway_port=free_port(), admin_port=free_port(),
            ports={name: free_port() for name in DEFAULT_PORTS},
            services=["iam", "components", "flows", "orchestrator", "webhooks"],
            extra_env={"OIH_IAM_ADMIN_USERNAME": ADMIN, "OIH_IAM_ADMIN_PASSWORD": PASSWORD,
                       "OIH_LOG_LEVEL": "WARNING", "OIH_BUS_NAMESPACE": namespace})
        with platform, httpx.Client(base_url=platform.gateway_url, timeout=60) as rest:
            token = _token(rest)
            name = _flow(rest, token)
            flow_id = name.removeprefix("flows/")
            sink = sink_path(flow_id, "sink", platform.data_dir)
            count = args.executions
            baseline = data_plane(platform.rabbitmq_url, flow_id, count, sink, 0)
            headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}

            def execute(client: httpx.Client, n: int) -> httpx.Response:
                return client.post(f"/v1/{name}:execute", headers=headers,
                                   content=json.dumps({"data": {"n": n}}).encode())

            def hook(client: httpx.Client, n: int) -> httpx.Response:
                return client.post(f"/hooks/{flow_id}", content=json.dumps({"n": n}).encode(),
                                   headers={"content-type": "application/json"})

            rows: list[tuple[str, float]] = []
            for label, call, before in ((":execute (REST via Envoy)", execute, count),
                                        ("POST /hooks/{id} (via Envoy)", hook, 2 * count)):
                print(f"{label}, {args.callers} callers:")
                rows.append((f"{label}, {args.callers} callers",
                             rest_callers(platform.gateway_url, args.callers, count, call, sink,
                                          before)))
    report(f"trigger intake, {args.executions} executions until the sink",
           ("data plane: published to the first step", baseline), rows, "exec/s")


if __name__ == "__main__":
    main()
