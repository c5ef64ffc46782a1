"""A scheduled flow through the real platform (REST via Envoy, scheduler, orchestrator, workers,
snapshots service): every few seconds the scheduler fires the flow, its `http-poll` trigger
fetches a local feed and emits only the new items, and the step's snapshot advances run by
run — also across a stop and a start of the flow. Another tenant sees neither the schedule
nor the snapshot."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from oih_cli.platform import Platform
from tests.e2e.conftest import (
    RECEIVER_HOST,
    auth,
    create_tenant_with_admin,
    unique,
    wait_state,
)
from tests.e2e.test_running_flows import sink_lines


class Feed(ThreadingHTTPServer):
    items: list[dict[str, Any]]
    hits: int = 0


@pytest.fixture
def feed() -> Iterator[Feed]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            running.hits += 1
            body = json.dumps(running.items).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    running = Feed((RECEIVER_HOST, 0), Handler)
    running.items = []
    threading.Thread(target=running.serve_forever, daemon=True).start()
    yield running
    running.shutdown()
    running.server_close()


def eventually(check: Callable[[], bool], what: str, timeout: float = 45.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.25)


def polled(platform: Platform, flow: str) -> list[int]:
    return [line["data"]["id"] for line in sink_lines(platform, flow, "sink")]


def test_cron_flow_with_a_polling_trigger_advances_its_snapshot_run_by_run(
        rest: httpx.Client, platform: Platform, admin_token: str, builtins: dict[str, str],
        feed: Feed) -> None:
    _, _, token = create_tenant_with_admin(rest, admin_token)
    flow = rest.post("/v1/flows", headers=auth(token), json={
        "display_name": unique("poller"),
        "cron": "*/2 * * * * *",  # every two seconds
        "graph": {
            "nodes": [
                {"id": "poll", "component": builtins["http-poll"], "function": "poll",
                 "fields": {"url": f"http://{RECEIVER_HOST}:{feed.server_port}/items"}},
                {"id": "sink", "component": builtins["sink"], "function": "sink"},
            ],
            "edges": [{"source": "poll", "target": "sink"}],
        },
    })
    assert flow.status_code == 200, flow.text
    name = flow.json()["name"]
    flow_id = name.removeprefix("flows/")
    snapshot_url = f"/v1/{name}/steps/poll/snapshot"
    feed.items = [{"id": 1}, {"id": 2}]
    assert rest.post(f"/v1/{name}:start", headers=auth(token), json={}).status_code == 200
    wait_state(rest, token, name, "STATE_ACTIVE", timeout=60)

    schedule = rest.get(f"/v1/schedules/{flow_id}", headers=auth(token))
    assert schedule.status_code == 200, schedule.text
    assert schedule.json()["cron"] == "*/2 * * * * *"
    assert schedule.json()["state"] == "STATE_ACTIVE" and schedule.json()["next_run_time"]

    # Run 1: both items; the snapshot holds the newest position.
    eventually(lambda: polled(platform, name) == [1, 2], "items 1 and 2 at the sink")
    eventually(lambda: rest.get(snapshot_url, headers=auth(token)).status_code == 200,
               "the poller's snapshot")
    assert rest.get(snapshot_url, headers=auth(token)).json()["data"] == {"position": 2}
    # Later runs: only what is new, once.
    hits = feed.hits
    eventually(lambda: feed.hits >= hits + 2, "two more ticks")
    assert polled(platform, name) == [1, 2]
    feed.items = [{"id": 1}, {"id": 2}, {"id": 3}]
    eventually(lambda: polled(platform, name) == [1, 2, 3], "item 3 at the sink")
    eventually(lambda: rest.get(snapshot_url, headers=auth(token)).json()["data"] == {
        "position": 3}, "the snapshot at position 3")
    fired = rest.get(f"/v1/schedules/{flow_id}", headers=auth(token)).json()
    assert fired["last_execution"].startswith(f"{name}/executions/tick-")
    assert fired["last_run_time"]
    execution = rest.get(f"/v1/{fired['last_execution']}", headers=auth(token))
    assert execution.status_code == 200, execution.text

    # A crashed trigger worker is restarted from the latest snapshot: nothing is polled twice.
    workers = rest.get(f"/v1/{name}/runtime", headers=auth(token)).json()["workers"]
    poller = next(w for w in workers if w["step_id"] == "poll")
    os.kill(int(poller["instance"].removeprefix("pid:")), signal.SIGKILL)
    eventually(lambda: any(
        w["step_id"] == "poll" and w["instance"] != poller["instance"]
        and w["state"] == "STATE_RUNNING"
        for w in rest.get(f"/v1/{name}/runtime", headers=auth(token)).json()["workers"]),
        "the poller restarted")
    hits = feed.hits
    eventually(lambda: feed.hits >= hits + 2, "two ticks of the restarted poller")
    assert polled(platform, name) == [1, 2, 3]

    # Stopped and started again, the trigger continues where it stopped (no item twice).
    assert rest.post(f"/v1/{name}:stop", headers=auth(token), json={}).status_code == 200
    wait_state(rest, token, name, "STATE_INACTIVE", timeout=60)
    stopped = rest.get(f"/v1/schedules/{flow_id}", headers=auth(token)).json()
    assert "next_run_time" not in stopped or not stopped["next_run_time"]
    feed.items = [{"id": n} for n in range(1, 6)]
    assert rest.post(f"/v1/{name}:start", headers=auth(token), json={}).status_code == 200
    wait_state(rest, token, name, "STATE_ACTIVE", timeout=60)
    eventually(lambda: polled(platform, name) == [1, 2, 3, 4, 5], "items 4 and 5 once")
    eventually(lambda: rest.get(snapshot_url, headers=auth(token)).json()["data"] == {
        "position": 5}, "the snapshot at position 5")

    # Another tenant sees neither the schedule nor the snapshot, and cannot fire or reset.
    _, _, other = create_tenant_with_admin(rest, admin_token)
    for reply in [rest.get(f"/v1/schedules/{flow_id}", headers=auth(other)),
                  rest.post(f"/v1/schedules/{flow_id}:runNow", headers=auth(other), json={}),
                  rest.get(snapshot_url, headers=auth(other)),
                  rest.delete(snapshot_url, headers=auth(other))]:
        assert reply.status_code == 404, reply.text
    assert rest.get("/v1/schedules", headers=auth(other)).json().get("schedules", []) == []
    assert rest.get(f"/v1/{name}/snapshots", headers=auth(other)).status_code == 404
    assert rest.get(snapshot_url, headers=auth(token)).json()["data"] == {"position": 5}
    rest.post(f"/v1/{name}:stop", headers=auth(token), json={})


def test_schedule_settings_run_now_and_pause_through_rest(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    """The README's calls: PATCH a schedule's time zone and policies, run it now, pause it."""
    token = integrator["token"]
    flow = rest.post("/v1/flows", headers=auth(token), json={
        "display_name": unique("yearly"), "cron": "0 9 1 1 *",
        "graph": {"nodes": [{"id": "tick", "component": builtins["timer"], "function": "timer"},
                            {"id": "sink", "component": builtins["sink"], "function": "sink"}],
                  "edges": [{"source": "tick", "target": "sink"}]}}).json()
    name = flow["name"]
    schedule = f"/v1/schedules/{name.removeprefix('flows/')}"
    assert rest.get(schedule, headers=auth(token)).status_code == 404  # never started
    rest.post(f"/v1/{name}:start", headers=auth(token), json={})
    wait_state(rest, token, name, "STATE_ACTIVE", timeout=60)
    eventually(lambda: rest.get(schedule, headers=auth(token)).json().get("next_run_time")
               is not None, "an armed schedule")
    changed = rest.patch(schedule, headers=auth(token), json={
        "time_zone": "Europe/Berlin", "overlap_policy": "OVERLAP_POLICY_BUFFER_ONE",
        "misfire_policy": "MISFIRE_POLICY_FIRE_ALL", "catch_up_window": "3600s"})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["time_zone"] == "Europe/Berlin" and body["catch_up_window"] == "3600s"
    assert body["next_run_time"].endswith("T08:00:00Z")  # 09:00 in Berlin, in winter
    bad = rest.patch(schedule, headers=auth(token), json={"time_zone": "Mars/Olympus"})
    assert bad.status_code == 400 and "time_zone" in bad.text
    ran = rest.post(f"{schedule}:runNow", headers=auth(token), json={})
    assert ran.status_code == 200, ran.text
    eventually(lambda: len(sink_lines(platform, name, "sink")) == 1, "the run at the sink")
    assert sink_lines(platform, name, "sink")[0]["data"]["fired_at"]
    paused = rest.patch(schedule, headers=auth(token), json={"state": "STATE_PAUSED"}).json()
    assert paused["state"] == "STATE_PAUSED" and "next_run_time" not in paused
    rest.post(f"/v1/{name}:stop", headers=auth(token), json={})
