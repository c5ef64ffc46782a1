"""Stopping 20 flows at once, five times: every flow ends INACTIVE and no broker user of them
is left (issue 14 §3: a burst used to leave one flow STOPPING, then FAILED, because every
teardown listed all broker users and RabbitMQ answered 500 while others were deleted)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from oih_cli.platform import Platform
from oih_orchestrator.management import USER_PREFIX, Management
from oih_orchestrator.settings import management_url_for
from tests.e2e.conftest import auth, unique, wait_state

FLOWS = 20
BURSTS = 5


def test_20_flows_stopped_at_once_five_times_all_end_inactive(
        rest: httpx.Client, platform: Platform, integrator: dict[str, str],
        builtins: dict[str, str]) -> None:
    token = integrator["token"]
    flows = []
    for _ in range(FLOWS):
        created = rest.post("/v1/flows", headers=auth(token), json={
            "display_name": unique("burst"),
            "graph": {"nodes": [
                {"id": "start", "component": builtins["trigger"], "function": "manual"},
                {"id": "sink", "component": builtins["sink"], "function": "sink"}],
                "edges": [{"source": "start", "target": "sink"}]}})
        assert created.status_code == 200, created.text
        flows.append(created.json()["name"])
    management = Management.for_broker(
        platform.management_url or management_url_for(platform.rabbitmq_url),
        platform.rabbitmq_url)

    def post(flow: str, verb: str) -> int:
        with httpx.Client(base_url=platform.gateway_url, timeout=30) as client:
            return client.post(f"/v1/{flow}:{verb}", headers=auth(token), json={}).status_code

    with ThreadPoolExecutor(FLOWS) as pool:
        for burst in range(BURSTS):
            began = time.monotonic()
            assert set(pool.map(lambda flow: post(flow, "start"), flows)) == {200}
            for flow in flows:
                wait_state(rest, token, flow, "STATE_ACTIVE", timeout=120)
            assert set(pool.map(lambda flow: post(flow, "stop"), flows)) == {200}
            for flow in flows:
                wait_state(rest, token, flow, "STATE_INACTIVE", timeout=60)
            left = [user for user in management.users(USER_PREFIX)
                    if user[len(USER_PREFIX):].split(".", 1)[0] in
                    {flow.removeprefix("flows/") for flow in flows}]
            assert left == []
            print(f"burst {burst}: started, stopped and cleaned in "
                  f"{time.monotonic() - began:.1f}s")
