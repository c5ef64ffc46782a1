"""The local driver: each worker is a child process `python -m oih_worker`.

Files, per flow `F` and step `S`, under `<data_dir>/workers/F/`:
- `S.json`  the StepSpec (mode 0600: it holds the step's broker password), handed to the worker
            by path (`OIH_WORKER_SPEC_FILE`), so the password is not in the process table;
- `S.pid`   the worker's pid, so a restarted orchestrator can adopt a worker that is still
            running instead of starting a second consumer next to it;
- `S.log`   the worker's stdout and stderr, appended across restarts (kept after removal).

A step's resolved credentials are never written there: the driver keeps them in memory and
writes them to each worker process's standard input, which the worker reads once and closes
(`oih_worker.credentials`). A worker adopted after an orchestrator restart keeps the
credentials it read; if it dies, the driver forgets it instead of restarting it without them,
and the reconciler deploys the step again with freshly resolved credentials.

Workers run in their own session (process group): a signal to the orchestrator's group (Ctrl-C)
does not reach them, and they survive an orchestrator crash, to be adopted when it comes back.
Adoption checks the pid's command line and environment, so a recycled pid is never mistaken for
a worker.

A supervisor thread restarts a worker that died, with exponential back-off. A worker that
keeps crashing (more than `max_crashes` times in a row, each run shorter than `stable_after`)
is left FAILED: the reconciler then fails the flow rather than restart it forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from oih.components.v1 import components_pb2
from oih_dataplane.spec import StepSpec
from oih_runtime.background import Periodic
from oih_worker.credentials import STDIN

from ..components import entry_point
from .base import FAILED, RESTARTING, RUNNING, STARTING, STOPPING, WorkerInfo, WorkerState

log = logging.getLogger(__name__)

#: A process alive this long counts as started (it had time to connect and consume).
STARTED_AFTER = 1.0


@dataclass
class _Worker:
    flow_id: str
    step_id: str
    spec_path: Path
    pid_path: Path
    log_path: Path
    pid: int = 0
    process: subprocess.Popen[bytes] | None = None  # None when adopted
    #: The step's resolved credentials (JSON), for each (re)start; None when it has none, or
    #: when the worker was adopted and this process never had them (`needs_credentials`).
    credentials: bytes | None = field(default=None, repr=False)
    needs_credentials: bool = False
    state: WorkerState = STARTING
    restarts: int = 0
    crashes: int = 0  # consecutive short runs
    start_time: datetime | None = None
    started: float = 0.0  # monotonic time of the current process's start
    restart_at: float = 0.0
    reason: str = ""

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return bool(self.pid) and _is_worker(self.pid, self.spec_path)

    def exit_text(self) -> str:
        code = self.process.returncode if self.process is not None else None
        text = "exited" if code is None else f"exited with code {code}"
        line = _last_line(self.log_path)
        return f"{text}; last log line: {line}" if line else text

    def info(self) -> WorkerInfo:
        return WorkerInfo(step_id=self.step_id, state=self.state, instance=f"pid:{self.pid}",
                          restarts=self.restarts, start_time=self.start_time,
                          state_reason=self.reason)


class LocalDriver:
    name = "local"

    def __init__(self, data_dir: Path, *, python: str = sys.executable,
                 env: Mapping[str, str] | None = None, backoff_initial: float = 1.0,
                 backoff_max: float = 30.0, max_crashes: int = 5, stable_after: float = 60.0,
                 stop_timeout: float = 40.0, poll_interval: float = 0.25) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.root = self.data_dir / "workers"
        self.python = python
        self.env = dict(env or {})
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_crashes = max_crashes
        self.stable_after = stable_after
        # Longer than the worker's own stop timeout (30 s), so a graceful stop is not cut short.
        self.stop_timeout = stop_timeout
        self.poll_interval = poll_interval
        self._workers: dict[tuple[str, str], _Worker] = {}
        self._lock = threading.Lock()
        #: Called with a crashed worker's spec before it is restarted; returns the spec to
        #: restart it with (the orchestrator puts the step's latest snapshot in it, so a
        #: restarted trigger continues where it stopped, not where its deployment started).
        self.refresh_spec: Callable[[StepSpec], StepSpec] | None = None
        self._supervisor = Periodic(self.check, poll_interval, "oih-local-driver",
                                    at_once=False, stop_timeout=10.0)
        self._adopt()

    # --- Driver ----------------------------------------------------------------------------

    def deploy(self, flow_id: str, specs: Sequence[StepSpec],
               components: Mapping[str, components_pb2.Component],
               credentials: Mapping[str, bytes] | None = None) -> None:
        for spec in specs:
            if not spec.entry_point:
                raise ValueError(f"step {spec.step_id}: the local driver needs a Python entry "
                                 "point (the component has no python_entry_point)")
        for spec in specs:
            with self._lock:
                old = self._workers.pop((flow_id, spec.step_id), None)
            if old is not None:
                self._terminate([old])
            worker = self._files(flow_id, spec.step_id)
            worker.credentials = (credentials or {}).get(spec.step_id)
            _write_private(worker.spec_path, spec.to_json())
            self._spawn(worker)
            with self._lock:
                self._workers[(flow_id, spec.step_id)] = worker

    def remove(self, flow_id: str) -> None:
        with self._lock:
            doomed = [w for key, w in self._workers.items() if key[0] == flow_id]
            for worker in doomed:
                worker.state = STOPPING  # the supervisor leaves it alone from now on
                del self._workers[(flow_id, worker.step_id)]
        folder = self.root / flow_id
        # Also workers only known from their pid files (never adopted, e.g. of a flow that
        # was stopped while this orchestrator was down).
        known = {w.pid for w in doomed}
        for pid_path in folder.glob("*.pid") if folder.is_dir() else []:
            pid = _read_pid(pid_path)
            spec_path = pid_path.with_suffix(".json")
            if pid and pid not in known and _is_worker(pid, spec_path):
                doomed.append(_Worker(flow_id, pid_path.stem, spec_path, pid_path,
                                      pid_path.with_suffix(".log"), pid=pid))
        self._terminate(doomed)
        for path in [*folder.glob("*.json"), *folder.glob("*.pid")] if folder.is_dir() else []:
            path.unlink(missing_ok=True)  # the logs stay for post-mortems

    def workers(self, flow_id: str) -> list[WorkerInfo]:
        with self._lock:
            return [w.info() for key, w in sorted(self._workers.items()) if key[0] == flow_id]

    def flows(self) -> set[str]:
        with self._lock:
            found = {flow for flow, _step in self._workers}
        if self.root.is_dir():
            found |= {d.name for d in self.root.iterdir()
                      if d.is_dir() and any(d.glob("*.json"))}
        return found

    # --- supervisor ------------------------------------------------------------------------

    def refusal(self, component: components_pb2.Component) -> str:
        """Why this driver cannot run `component` ("" when it can): it runs Python entry
        points only."""
        if entry_point(component):
            return ""
        return (f"component {component.name} has no Python entry point, which the local driver "
                "needs")

    def start(self) -> None:
        self._supervisor.start()

    def close(self) -> None:
        """Stop supervising; the workers keep running (a new orchestrator adopts them)."""
        self._supervisor.stop()

    def check(self) -> None:
        """One supervisor round: notice deaths, restart those whose back-off has passed."""
        now = time.monotonic()
        due: list[_Worker] = []
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            with self._lock:
                if self._workers.get((worker.flow_id, worker.step_id)) is not worker:
                    continue  # removed or replaced meanwhile
                if worker.state in (STARTING, RUNNING):
                    if worker.alive():
                        if worker.state == STARTING and now - worker.started >= STARTED_AFTER:
                            worker.state = RUNNING
                        continue
                    self._crashed(worker, now)
                elif worker.state == RESTARTING and now >= worker.restart_at:
                    due.append(worker)
        for worker in due:
            self._refresh(worker)  # outside the lock: it may ask another service
            with self._lock:
                if (self._workers.get((worker.flow_id, worker.step_id)) is not worker
                        or worker.state != RESTARTING):
                    continue
                worker.restarts += 1
                self._spawn(worker)

    def _refresh(self, worker: _Worker) -> None:
        if self.refresh_spec is None:
            return
        try:
            spec = StepSpec.from_json(worker.spec_path.read_text())
            fresh = self.refresh_spec(spec)
            if fresh != spec:
                _write_private(worker.spec_path, fresh.to_json())
        except Exception:  # the old spec still runs the step
            log.warning("could not refresh the spec of a restarting worker", exc_info=True,
                        extra={"flow_id": worker.flow_id, "step_id": worker.step_id})

    def _crashed(self, worker: _Worker, now: float) -> None:
        if worker.process is not None:
            worker.process.wait()  # reap it
        if worker.needs_credentials and worker.credentials is None:
            # Adopted, and its credentials died with it: the reconciler deploys it again.
            del self._workers[(worker.flow_id, worker.step_id)]
            worker.pid_path.unlink(missing_ok=True)
            log.warning("adopted worker died; leaving it to the reconciler",
                        extra={"flow_id": worker.flow_id, "step_id": worker.step_id})
            return
        worker.crashes = 1 if now - worker.started >= self.stable_after else worker.crashes + 1
        worker.reason = worker.exit_text()
        if worker.crashes > self.max_crashes:
            worker.state = FAILED
            worker.reason = f"crashed {worker.crashes} times in a row; {worker.reason}"
            log.error("worker keeps crashing; giving up", extra={
                "flow_id": worker.flow_id, "step_id": worker.step_id, "reason": worker.reason})
            return
        delay = min(self.backoff_initial * 2 ** (worker.crashes - 1), self.backoff_max)
        worker.state = RESTARTING
        worker.restart_at = now + delay
        log.warning("worker died; restarting", extra={
            "flow_id": worker.flow_id, "step_id": worker.step_id, "in_seconds": delay,
            "reason": worker.reason})

    # --- processes -------------------------------------------------------------------------

    def _files(self, flow_id: str, step_id: str) -> _Worker:
        folder = self.root / flow_id
        folder.mkdir(parents=True, exist_ok=True)
        return _Worker(flow_id, step_id, folder / f"{step_id}.json", folder / f"{step_id}.pid",
                       folder / f"{step_id}.log")

    def _spawn(self, worker: _Worker) -> None:
        env = {**os.environ, "OIH_DATA_DIR": str(self.data_dir), **self.env,
               "OIH_WORKER_SPEC_FILE": str(worker.spec_path)}
        env.pop("OIH_WORKER_SPEC", None)  # it would win over the file
        env.pop("OIH_WORKER_CREDENTIALS_FILE", None)
        if worker.credentials is not None:
            env["OIH_WORKER_CREDENTIALS"] = STDIN
        else:
            env.pop("OIH_WORKER_CREDENTIALS", None)
        with worker.log_path.open("ab") as log_file:
            log_file.write(f"--- starting worker at {datetime.now(UTC).isoformat()}\n".encode())
            log_file.flush()
            worker.process = subprocess.Popen(
                [self.python, "-m", "oih_worker"], env=env,
                stdin=subprocess.DEVNULL if worker.credentials is None else subprocess.PIPE,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        if worker.credentials is not None:
            _hand_over(worker.process, worker.credentials)
        worker.pid = worker.process.pid
        worker.pid_path.write_text(str(worker.pid))
        worker.state = STARTING
        worker.started = time.monotonic()
        worker.start_time = datetime.now(UTC)
        log.info("worker started", extra={"flow_id": worker.flow_id, "step_id": worker.step_id,
                                          "pid": worker.pid})

    def _terminate(self, workers: list[_Worker]) -> None:
        """SIGTERM all (they drain in parallel), wait, SIGKILL what is left."""
        for worker in workers:
            worker.state = STOPPING
            if worker.alive():
                _signal(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for worker in workers:
            while worker.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if worker.alive():
                log.warning("worker did not stop in time; killing it",
                            extra={"flow_id": worker.flow_id, "step_id": worker.step_id})
                _signal(worker.pid, signal.SIGKILL)
            if worker.process is not None:
                worker.process.wait()
            worker.pid_path.unlink(missing_ok=True)

    def _adopt(self) -> None:
        """Take over workers a previous orchestrator left running."""
        if not self.root.is_dir():
            return
        for pid_path in sorted(self.root.glob("*/*.pid")):
            flow_id, step_id = pid_path.parent.name, pid_path.stem
            worker = self._files(flow_id, step_id)
            pid = _read_pid(pid_path)
            if pid and _is_worker(pid, worker.spec_path):
                worker.pid, worker.state, worker.started = pid, RUNNING, time.monotonic()
                worker.needs_credentials = _reads_credentials(pid)
                worker.start_time = datetime.fromtimestamp(pid_path.stat().st_mtime, UTC)
                self._workers[(flow_id, step_id)] = worker
                log.info("adopted a running worker",
                         extra={"flow_id": flow_id, "step_id": step_id, "pid": pid})
            else:
                pid_path.unlink(missing_ok=True)


# --- helpers ---------------------------------------------------------------------------------

def stop_all_workers(data_dir: Path, timeout: float = 10.0) -> int:
    """SIGTERM every worker started under `data_dir` (found by pid file, checked like an
    adoption), wait for them, SIGKILL what is left; returns how many were stopped.

    Workers outlive the orchestrator on purpose (a restarted orchestrator adopts them); this is
    for ending the whole platform, after which a start reconciles ACTIVE flows again."""
    running = [
        pid for pid_file in (data_dir / "workers").glob("*/*.pid")
        if (pid := _read_pid(pid_file)) and _is_worker(pid, pid_file.with_suffix(".json"))
    ]
    for pid in running:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in running):
        time.sleep(0.1)
    for pid in running:
        _signal(pid, signal.SIGKILL)
    return len(running)


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by our user only, atomically (a worker never reads half a spec)."""
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(temporary, 0o600)  # O_CREAT's mode does not apply to an existing file
    os.replace(temporary, path)


def _hand_over(process: subprocess.Popen[bytes], credentials: bytes) -> None:
    """Write the credentials to the worker's standard input and close it (the worker reads to
    the end first thing; a pipe buffer holds a secret of up to 64 KiB without blocking)."""
    assert process.stdin is not None
    try:
        process.stdin.write(credentials)
        process.stdin.close()
    except BrokenPipeError:
        pass  # the worker died at once; the supervisor sees it


def _reads_credentials(pid: int) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"OIH_WORKER_CREDENTIALS={STDIN}".encode() in environ


def _read_pid(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 0


def _is_worker(pid: int, spec_path: Path) -> bool:
    """Whether `pid` is a live `oih_worker` process of exactly this spec file."""
    proc = Path(f"/proc/{pid}")
    try:
        if proc.joinpath("stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return False  # exited, not yet reaped
        if b"oih_worker" not in proc.joinpath("cmdline").read_bytes():
            return False
        environ = proc.joinpath("environ").read_bytes().split(b"\0")
    except (OSError, IndexError):
        return False
    return f"OIH_WORKER_SPEC_FILE={spec_path}".encode() in environ


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _last_line(path: Path, limit: int = 300) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 4096, 0))
            lines = [line for line in handle.read().decode(errors="replace").splitlines()
                     if line.strip()]
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""
