"""What the fault tests share: flows to break, load to keep them busy, and what the process
table and the sinks say afterwards."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

from oih_cli.platform import Platform
from tests.e2e.conftest import auth, unique, wait_state

COMPONENTS = "tests.faults.components:component"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def builtin_components(rest: httpx.Client, token: str) -> dict[str, str]:
    """The built-ins the orchestrator registers at start (display name → name)."""
    names: dict[str, str] = {}

    def registered() -> bool:
        found = rest.get("/v1/components", headers=auth(token),
                         params={"filter": "access=PUBLIC", "page_size": 100}).json()
        names.update({c["display_name"]: c["name"] for c in found.get("components", [])})
        return {"trigger", "transform", "sink"} <= names.keys()

    wait_for(registered, 30, "the built-in components")
    return names


def start_flow(rest: httpx.Client, token: str, components: dict[str, str], middle: str = "work",
               fields: dict[str, Any] | None = None,
               settings: dict[str, Any] | None = None) -> str:
    """trigger → `middle` → sink, started and ACTIVE; returns its name."""
    node: dict[str, Any] = {"id": "middle", "component": components[middle],
                            "function": middle, "fields": fields or {"seconds": 0.005}}
    if settings:
        node["settings"] = settings
    flow = rest.post("/v1/flows", headers=auth(token), json={
        "display_name": unique("faults"),
        "graph": {
            "nodes": [{"id": "start", "component": components["trigger"], "function": "manual"},
                      node,
                      {"id": "sink", "component": components["sink"], "function": "sink"}],
            "edges": [{"source": "start", "target": "middle"},
                      {"source": "middle", "target": "sink"}],
        }})
    assert flow.status_code == 200, flow.text
    name = str(flow.json()["name"])
    started = rest.post(f"/v1/{name}:start", headers=auth(token), json={})
    assert started.status_code == 200, started.text
    wait_state(rest, token, name, "STATE_ACTIVE", timeout=60)
    return name


def stop_flow(rest: httpx.Client, token: str, flow: str) -> None:
    rest.post(f"/v1/{flow}:stop", headers=auth(token), json={})
    wait_state(rest, token, flow, "STATE_INACTIVE", timeout=90)


def execute(rest: httpx.Client, token: str, flow: str, data: dict[str, Any]) -> bool:
    """Run the flow once; True when the platform accepted the execution (HTTP 200)."""
    return execute_status(rest, token, flow, data) == 200


def execute_status(rest: httpx.Client, token: str, flow: str, data: dict[str, Any]) -> int:
    """Run the flow once; the HTTP status (0: no answer). A refusal must be JSON."""
    try:
        reply = rest.post(f"/v1/{flow}:execute", headers=auth(token), json={"data": data})
    except httpx.HTTPError:
        return 0
    if reply.status_code != 200:
        assert reply.headers.get("content-type", "").startswith("application/json"), reply.text
    return reply.status_code


def execute_many(rest: httpx.Client, token: str, flow: str, numbers: range) -> set[int]:
    """Execute the flow once per number (8 at a time); the numbers that were accepted."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        accepted = pool.map(lambda n: (n, execute(rest, token, flow, {"n": n})), numbers)
        return {n for n, ok in accepted if ok}


class Load:
    """Executes flows in a background thread, one after another, until stopped; remembers
    which numbers each flow accepted."""

    def __init__(self, rest: httpx.Client, token: str, flows: list[str], start: int = 0,
                 pause: float = 0.0) -> None:
        self.rest, self.token, self.flows, self.pause = rest, token, flows, pause
        self.accepted: dict[str, set[int]] = {flow: set() for flow in flows}
        #: The HTTP status of every refused execution (0: no answer at all).
        self.refusals: list[int] = []
        self._next = start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            for flow in self.flows:
                status = execute_status(self.rest, self.token, flow, {"n": self._next})
                if status == 200:
                    self.accepted[flow].add(self._next)
                else:
                    self.refusals.append(status)
            self._next += 1
            self._stop.wait(self.pause)


def sink_lines(platform: Platform, flow: str) -> list[dict[str, Any]]:
    path = Path(platform.data_dir) / "sinks" / flow.removeprefix("flows/") / "sink.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def arrived(platform: Platform, flow: str) -> set[int]:
    return {int(line["data"]["n"]) for line in sink_lines(platform, flow)
            if "n" in line["data"]}


def wait_arrived(platform: Platform, flow: str, expected: set[int], timeout: float) -> None:
    wait_for(lambda: expected <= arrived(platform, flow), timeout,
             f"{len(expected)} messages at the sink of {flow} "
             f"(missing {len(expected - arrived(platform, flow))})")


def worker_processes(platform: Platform, flow: str) -> dict[str, list[psutil.Process]]:
    """The live worker processes of a flow in the process table, by step (zombies excluded)."""
    folder = str(Path(platform.data_dir).resolve() / "workers" / flow.removeprefix("flows/"))
    found: dict[str, list[psutil.Process]] = {}
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            if "oih_worker" not in " ".join(process.info["cmdline"] or []):
                continue
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            spec = process.environ().get("OIH_WORKER_SPEC_FILE", "")
        except psutil.Error:
            continue
        if spec.startswith(folder + "/"):
            found.setdefault(Path(spec).stem, []).append(process)
    return found


def worker_pids(platform: Platform, flow: str) -> dict[str, int]:
    """Step → pid of its one worker (asserting there is exactly one per step)."""
    processes = worker_processes(platform, flow)
    assert all(len(found) == 1 for found in processes.values()), processes
    return {step: found[0].pid for step, found in processes.items()}


def runtime_pids(rest: httpx.Client, token: str, flow: str) -> dict[str, int]:
    """Step → pid as the orchestrator's runtime view reports it."""
    runtime = rest.get(f"/v1/{flow}/runtime", headers=auth(token))
    assert runtime.status_code == 200, runtime.text
    return {w["step_id"]: int(w["instance"].removeprefix("pid:"))
            for w in runtime.json()["workers"]}
