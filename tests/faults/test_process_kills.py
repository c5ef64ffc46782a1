"""SIGKILL under load, through the real processes: a worker killed mid-stream is restarted by
the orchestrator's supervisor and loses nothing; a killed orchestrator is restarted by the
platform's supervisor and adopts its workers, which kept running. The process table is the
witness, not only the orchestrator's own view."""

from __future__ import annotations

import os
import signal
from collections import Counter

import httpx
import psutil
import pytest

from oih_cli.platform import Platform
from tests.e2e.conftest import auth
from tests.faults.support import (
    Load,
    arrived,
    execute_many,
    runtime_pids,
    sink_lines,
    start_flow,
    stop_flow,
    wait_arrived,
    wait_for,
    worker_pids,
)

pytestmark = pytest.mark.faults

#: The worker's default prefetch: what a crash may deliver twice at most.
PREFETCH = 50
MESSAGES = 300


def test_a_worker_killed_under_load_is_restarted_by_its_supervisor_and_loses_nothing(
        rest: httpx.Client, platform: Platform, token: str, components: dict[str, str]) -> None:
    flow = start_flow(rest, token, components, fields={"seconds": 0.02})
    before = worker_pids(platform, flow)
    assert sorted(before) == ["middle", "sink", "start"]
    accepted = execute_many(rest, token, flow, range(MESSAGES))
    assert len(accepted) == MESSAGES
    wait_for(lambda: len(arrived(platform, flow)) >= 30, 60, "some progress")
    assert len(arrived(platform, flow)) < MESSAGES, "killed too late to prove anything"

    victim = psutil.Process(before["middle"])
    os.kill(victim.pid, signal.SIGKILL)

    # The orchestrator's local driver notices, reaps and starts a new one; nobody else does.
    wait_for(lambda: worker_pids(platform, flow).get("middle", victim.pid) != victim.pid, 30,
             "a new worker for the killed step")
    after = worker_pids(platform, flow)  # exactly one process per step
    assert after["start"] == before["start"] and after["sink"] == before["sink"]
    assert not psutil.pid_exists(victim.pid), "the killed worker was not reaped"
    wait_arrived(platform, flow, accepted, 120)
    lines = sink_lines(platform, flow)
    copies = Counter(line["id"] for line in lines)
    assert len(copies) == MESSAGES  # one output id per input, whatever was delivered twice
    assert len(lines) - MESSAGES <= PREFETCH
    runtime = rest.get(f"/v1/{flow}/runtime", headers=auth(token)).json()
    middle = next(w for w in runtime["workers"] if w["step_id"] == "middle")
    assert int(middle["restarts"]) == 1 and middle["instance"] == f"pid:{after['middle']}"
    assert rest.get(f"/v1/{flow}", headers=auth(token)).json()["state"] == "STATE_ACTIVE"
    stop_flow(rest, token, flow)


def test_a_killed_orchestrator_is_restarted_and_adopts_the_workers_that_kept_running(
        rest: httpx.Client, platform: Platform, token: str, components: dict[str, str]) -> None:
    flow = start_flow(rest, token, components, fields={"seconds": 0.01})
    workers = worker_pids(platform, flow)
    orchestrator = platform.children["orchestrator"]
    restarts = platform.restarts.get("orchestrator", 0)
    with Load(rest, token, [flow]) as load:
        wait_for(lambda: len(arrived(platform, flow)) >= 20, 60, "some progress")
        orchestrator.send_signal(signal.SIGKILL)
        # `oih up`'s supervisor restarts it. Meanwhile the Flow Repository waits for it
        # (wait_for_ready) within its deadline; a trigger it cannot place is refused as
        # retryable (503 JSON), never accepted and lost.
        platform.wait_restarted("orchestrator", restarts + 1)
        progress = len(arrived(platform, flow))
        wait_for(lambda: len(arrived(platform, flow)) >= progress + 20, 60,
                 "progress after the restart")
    assert set(load.refusals) <= {503}, load.refusals
    assert orchestrator.poll() is not None and not psutil.pid_exists(orchestrator.pid)
    assert platform.children["orchestrator"].pid != orchestrator.pid
    # The same worker processes, one per step, and the new orchestrator knows them as such.
    assert worker_pids(platform, flow) == workers
    wait_for(lambda: runtime_pids(rest, token, flow) == workers, 30, "the workers adopted")
    wait_arrived(platform, flow, load.accepted[flow], 120)
    assert rest.get(f"/v1/{flow}", headers=auth(token)).json()["state"] == "STATE_ACTIVE"
    stop_flow(rest, token, flow)
    assert worker_pids(platform, flow) == {}
