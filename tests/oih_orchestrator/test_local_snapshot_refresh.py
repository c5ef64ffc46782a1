"""A worker the local driver restarts after a crash starts from its step's latest snapshot (the
driver asks `refresh_spec` before restarting), not from the one its deployment began with; a
failing refresh restarts it with the spec it had.

The "worker" is a real child process: a stand-in interpreter that records the snapshot in the
spec file it was started with and then waits, so the test needs no broker."""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from oih.components.v1 import components_pb2
from oih_dataplane.spec import StepSpec
from oih_orchestrator.drivers.local import LocalDriver
from tests.oih_orchestrator.test_local_credentials import wait_for, worker_pid


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    script = tmp_path / "fake-python"
    script.write_text(f"""#!{sys.executable}
import json, os, time
with open(os.environ["OIH_WORKER_SPEC_FILE"]) as handle:
    spec = json.load(handle)
path = os.path.join(os.environ["OIH_DATA_DIR"], f"started-{{os.getpid()}}")
with open(path + ".tmp", "w") as handle:
    json.dump([spec["snapshot"], spec["snapshot_sequence"]], handle)
os.replace(path + ".tmp", path)
time.sleep(120)
""")
    script.chmod(0o700)
    return script


def started(data_dir: Path) -> list[list[object]]:
    files = sorted((p for p in data_dir.glob("started-*") if p.suffix != ".tmp"),
                   key=lambda p: p.stat().st_mtime_ns)
    return [json.loads(p.read_text()) for p in files]


def test_a_restarted_worker_continues_from_the_latest_snapshot(
        tmp_path: Path, fake_python: Path) -> None:
    data_dir = tmp_path / "data"
    driver = LocalDriver(data_dir, python=str(fake_python), backoff_initial=0.05)
    latest = {"position": 7}
    asked: list[str] = []

    def refresh(spec: StepSpec) -> StepSpec:
        asked.append(spec.step_id)
        if latest.get("fail"):
            raise ConnectionError("the Snapshots service is down")
        return replace(spec, snapshot=dict(latest), snapshot_sequence=700)

    driver.refresh_spec = refresh
    spec = StepSpec("f1", "s1", "oih_builtins.log:component", "log",
                    snapshot={"position": 3}, snapshot_sequence=300)
    try:
        driver.deploy("f1", [spec], {"s1": components_pb2.Component()})
        wait_for(lambda: len(started(data_dir)) == 1)
        assert started(data_dir) == [[{"position": 3}, 300]]  # the deployment's snapshot
        assert asked == []
        os.kill(worker_pid(data_dir), signal.SIGKILL)
        wait_for(lambda: (driver.check(), len(started(data_dir)) == 2)[1])
        assert started(data_dir)[1] == [{"position": 7}, 700]
        assert asked == ["s1"]
        latest["fail"] = 1  # the refresh fails: restarted all the same, with what it had
        os.kill(worker_pid(data_dir), signal.SIGKILL)
        wait_for(lambda: (driver.check(), len(started(data_dir)) == 3)[1])
        assert started(data_dir)[2] == [{"position": 7}, 700]
    finally:
        driver.remove("f1")
        driver.close()
