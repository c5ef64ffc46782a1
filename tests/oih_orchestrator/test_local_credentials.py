"""The local driver hands a step's credentials to each worker process over its standard input:
never in the spec file, the command line or the environment; again on every restart; and a
worker adopted by a new orchestrator (which never had the credentials) is left to the
reconciler when it dies instead of being restarted without them.

The "worker" is a real child process: a stand-in interpreter that records a hash of what it
read on stdin and then waits, so the test needs no broker."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from oih.components.v1 import components_pb2
from oih_orchestrator.local import LocalDriver
from oih_worker.spec import StepSpec

CREDENTIALS = b'{"api_key": "sk-local-credential-0123456789"}'
VALUE = b"sk-local-credential-0123456789"


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    script = tmp_path / "fake-python"
    # Called as `fake-python -m oih_worker` (one process, so its command line stays a
    # worker's): record a hash of what came on stdin, then wait like a worker.
    script.write_text(f"""#!{sys.executable}
import hashlib, os, sys, time
digest = hashlib.sha256(sys.stdin.buffer.read()).hexdigest()
path = os.path.join(os.environ["OIH_DATA_DIR"], f"received-{{os.getpid()}}")
with open(path + ".tmp", "w") as handle:
    handle.write(digest)
os.replace(path + ".tmp", path)
time.sleep(120)
""")
    script.chmod(0o700)
    return script


def received(data_dir: Path) -> list[str]:
    return sorted(p.read_text() for p in data_dir.glob("received-*") if p.suffix != ".tmp")


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert condition(), "condition not met in time"


def worker_pid(data_dir: Path) -> int:
    return int((data_dir / "workers" / "f1" / "s1.pid").read_text())


def test_credentials_go_over_stdin_on_every_start_and_never_to_disk(
        tmp_path: Path, fake_python: Path) -> None:
    data_dir = tmp_path / "data"
    driver = LocalDriver(data_dir, python=str(fake_python), backoff_initial=0.05)
    spec = StepSpec("f1", "s1", "oih_builtins.log:component", "log")
    expected = hashlib.sha256(CREDENTIALS).hexdigest()
    try:
        driver.deploy("f1", [spec], {"s1": components_pb2.Component()}, {"s1": CREDENTIALS})
        wait_for(lambda: len(received(data_dir)) == 1)
        assert received(data_dir) == [expected]
        pid = worker_pid(data_dir)
        proc = Path(f"/proc/{pid}")
        assert VALUE not in proc.joinpath("cmdline").read_bytes()
        assert VALUE not in proc.joinpath("environ").read_bytes()
        assert b"OIH_WORKER_CREDENTIALS=stdin" in proc.joinpath("environ").read_bytes()
        # A crash: the supervisor restarts it and hands the credentials over again.
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (driver.check(), len(received(data_dir)) == 2)[1])
        assert received(data_dir) == [expected, expected]
        # Nothing under the data directory holds the value (spec file, pid file, log).
        assert [p for p in (data_dir / "workers").rglob("*")
                if p.is_file() and VALUE in p.read_bytes()] == []
    finally:
        driver.close()

    # A new orchestrator adopts the running worker; if that worker dies, it is not restarted
    # without its credentials but left for the reconciler to deploy again.
    adopter = LocalDriver(data_dir, python=str(fake_python), backoff_initial=0.05)
    try:
        assert [w.step_id for w in adopter.workers("f1")] == ["s1"]
        os.kill(worker_pid(data_dir), signal.SIGKILL)
        wait_for(lambda: (adopter.check(), adopter.workers("f1") == [])[1])
        time.sleep(0.3)
        adopter.check()
        assert adopter.workers("f1") == []
        assert len(received(data_dir)) == 2  # no start without credentials
    finally:
        adopter.remove("f1")
        adopter.close()


def test_without_credentials_the_worker_gets_no_stdin(tmp_path: Path, fake_python: Path) -> None:
    data_dir = tmp_path / "data"
    driver = LocalDriver(data_dir, python=str(fake_python))
    try:
        driver.deploy("f1", [StepSpec("f1", "s1", "oih_builtins.log:component", "log")],
                      {"s1": components_pb2.Component()})
        wait_for(lambda: len(received(data_dir)) == 1)
        pid = worker_pid(data_dir)
        assert b"OIH_WORKER_CREDENTIALS" not in Path(f"/proc/{pid}/environ").read_bytes()
        # /dev/null on stdin: the hash of nothing.
        wait_for(lambda: received(data_dir) == [hashlib.sha256(b"").hexdigest()])
    finally:
        driver.remove("f1")
        driver.close()
