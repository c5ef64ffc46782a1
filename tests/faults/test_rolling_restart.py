"""A rolling restart of the Flow Repository (two replicas behind Envoy) under REST load fails
no request: each replica drains after SIGTERM (NOT_SERVING first, so Envoy's health check sends
new calls to the other one), and Envoy retries, on the other replica, what could not have been
processed (no connection, a refused stream)."""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest

from oih_cli.platform import Platform
from tests.e2e.conftest import auth, unique

pytestmark = pytest.mark.faults


def test_a_rolling_restart_of_the_flow_repository_fails_no_request(
        rest: httpx.Client, platform: Platform, token: str, components: dict[str, str]) -> None:
    assert platform.instances("flows") == ["flows", "flows-2"]
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=platform.gateway_url, timeout=30) as client:
            while not stop.is_set():
                created = client.post("/v1/flows", headers=auth(token), json={
                    "display_name": unique("rolling"),
                    "graph": {"nodes": [{"id": "start", "component": components["trigger"],
                                         "function": "manual"}]}})
                replies = [created]
                if created.status_code == 200:
                    name = created.json()["name"]
                    replies.append(client.get(f"/v1/{name}", headers=auth(token)))
                    replies.append(client.delete(f"/v1/{name}", headers=auth(token)))
                replies.append(client.get("/v1/flows", headers=auth(token),
                                          params={"page_size": 5}))
                for reply in replies:
                    statuses[reply.status_code] += 1
                    if reply.status_code != 200:
                        failures.append(f"{reply.request.method} {reply.request.url.path}: "
                                        f"{reply.status_code} {reply.text[:200]}")

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        before = platform.children["flows"].pid, platform.children["flows-2"].pid
        platform.roll("flows")
        after = platform.children["flows"].pid, platform.children["flows-2"].pid
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert not set(before) & set(after), "both replicas must have been replaced"
    assert failures == [], failures[:5]
    assert statuses[200] > 100, statuses  # the load really ran through the restart
