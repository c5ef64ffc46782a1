"""A worker killed mid-stream loses nothing; SIGTERM stops it gracefully."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from oih_dataplane.spec import EdgeSpec, StepSpec
from tests.gateway.conftest import free_port
from tests.oih_worker.support import ROOT, FlowHarness, wait_for

TRIGGER = "oih_builtins.trigger:component"
SINK = "oih_builtins.sink:component"
TEST = "tests.oih_worker.components:component"
PREFETCH = 50


def _slow_flow(harness: FlowHarness, seconds: float, total: int) -> None:
    """trigger → slow → sink, with `total` messages queued for `slow` before it starts."""
    harness.step("start", TRIGGER, "manual", edges=[EdgeSpec("slow")])
    harness.step("slow", TEST, "slow", config={"seconds": seconds}, prefetch=PREFETCH,
                 edges=[EdgeSpec("out")])
    harness.step("out", SINK, "sink")
    harness.declare()
    harness.start("start")
    harness.start("out")
    for n in range(total):
        harness.publish("start", {"n": n})
    slow_queue = f"oih.flow.{harness.flow_id}.slow"
    wait_for(lambda: harness.queue_depth(slow_queue) == total, 30, "inputs queued for slow")
    harness.start("slow")


def test_sigkill_loses_nothing(harness: FlowHarness) -> None:
    total = 1500
    _slow_flow(harness, 0.002, total)
    wait_for(lambda: len(harness.sink("out")) >= 200, 30, "some progress")
    assert harness.signal("slow", signal.SIGKILL) == -signal.SIGKILL
    assert len(harness.sink("out")) < total, "killed too late to prove anything"
    harness.start("slow")

    def all_arrived() -> bool:
        return len({line["data"]["n"] for line in harness.sink("out")}) == total

    wait_for(all_arrived, 60, "every input at the sink after the restart")
    lines = harness.sink("out")
    by_id: dict[str, list[dict[str, object]]] = defaultdict(list)
    for line in lines:
        by_id[line["id"]].append(line)
    # One output id per input; duplicates are identical copies, within the prefetch window.
    assert len(by_id) == total
    assert all(all(copy == copies[0] for copy in copies) for copies in by_id.values())
    assert len(lines) - total <= PREFETCH
    assert harness.stop_all() == {"start": 0, "slow": 0, "out": 0}


def test_sigterm_stops_gracefully(harness: FlowHarness) -> None:
    total = 800
    _slow_flow(harness, 0.003, total)
    wait_for(lambda: len(harness.sink("out")) >= 100, 30, "some progress")
    assert harness.signal("slow", signal.SIGTERM) == 0, harness.log_of("slow")
    stopped_at = len(harness.sink("out"))
    assert stopped_at < total, "stopped too late to prove anything"
    assert '"stopping: finishing in-flight messages"' in harness.log_of("slow")
    harness.start("slow")
    wait_for(lambda: len(harness.sink("out")) >= total, 60, "every input after the restart")
    assert harness.stop_all() == {"start": 0, "slow": 0, "out": 0}
    lines = harness.sink("out")
    # A graceful stop acks what it finished and hands back the rest: no duplicates at all.
    assert len(lines) == total
    assert sorted(line["data"]["n"] for line in lines) == list(range(total))


def test_a_worker_without_a_broker_waits_for_it_instead_of_exiting(tmp_path: Path) -> None:
    # Losing (or never reaching) the broker is not a crash: the worker keeps trying with
    # back-off, so its supervisor never counts it as one, and a stop still ends it cleanly.
    nobody = free_port()
    spec = StepSpec(flow_id="t-no-broker", step_id="s", entry_point=TRIGGER, function="manual",
                    amqp_url=f"amqp://guest:guest@127.0.0.1:{nobody}/%2F")
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "oih_worker"], cwd=ROOT, stdout=log, stderr=log,
            env={**os.environ, "OIH_WORKER_SPEC": spec.to_json(), "OIH_DATA_DIR": str(tmp_path),
                 "PYTHONPATH": os.pathsep.join(
                     [str(ROOT), str(ROOT / "generated"), str(ROOT / "services")])})
        try:
            wait_for(lambda: log_path.read_text().count("broker unavailable") >= 3, 30,
                     "three attempts to reach the broker")
            assert worker.poll() is None
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
