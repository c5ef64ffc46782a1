"""A flow under test: topology, worker processes, publishing, reading sinks and queues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
from google.protobuf import json_format

from oih.component.v1 import message_pb2
from oih_builtins.sink import sink_path
from oih_dataplane import envelope, topology
from oih_dataplane.spec import EdgeSpec, RetrySpec, StepSpec
from oih_sdk import Message

ROOT = Path(__file__).resolve().parents[2]
TEST_COMPONENTS = "tests.oih_worker.components:component"
FAST_RETRY = RetrySpec(max_attempts=3, initial_delay=0.05, multiplier=2, max_delay=0.2,
                       jitter=0.2)


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.05)


class FlowHarness:
    def __init__(self, amqp_url: str, tmp_path: Path) -> None:
        self.amqp_url = amqp_url
        self.tmp_path = tmp_path
        self.flow_id = f"t{uuid.uuid4().hex[:12]}"
        self.specs: dict[str, StepSpec] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[Any] = []
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    # --- flow definition -----------------------------------------------------------------

    def step(self, step_id: str, entry_point: str, function: str, *,
             edges: list[EdgeSpec] | None = None, **options: Any) -> StepSpec:
        spec = StepSpec(flow_id=self.flow_id, step_id=step_id, entry_point=entry_point,
                        function=function, amqp_url=self.amqp_url, edges=edges or [],
                        retry=options.pop("retry", FAST_RETRY), report_interval=0.1,
                        **options)
        self.specs[step_id] = spec
        return spec

    @property
    def snapshots_queue(self) -> str:
        """This flow's own snapshots queue (the platform-wide one is the Snapshots service's)."""
        return topology.snapshots_queue(f"test-{self.flow_id}")

    def declare(self) -> None:
        topology.declare_flow(self.channel, self.flow_id,
                              {step: spec.retry.retry_levels for step, spec in self.specs.items()},
                              self.snapshots_queue)

    # --- workers -------------------------------------------------------------------------

    def start(self, step_id: str | None = None) -> None:
        for step in [step_id] if step_id else list(self.specs):
            log = (self.tmp_path / f"{step}.log").open("ab")
            self._logs.append(log)
            env = {**os.environ, "OIH_WORKER_SPEC": self.specs[step].to_json(),
                   "OIH_DATA_DIR": str(self.tmp_path),
                   "PYTHONPATH": os.pathsep.join(
                       [str(ROOT), str(ROOT / "generated"), str(ROOT / "services")])}
            self.processes[step] = subprocess.Popen(
                [sys.executable, "-m", "oih_worker"], env=env, cwd=ROOT,
                stdout=log, stderr=log)

    def signal(self, step_id: str, sig: int) -> int:
        process = self.processes[step_id]
        process.send_signal(sig)
        return process.wait(timeout=30)

    def stop_all(self) -> dict[str, int]:
        codes = {}
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for step, process in self.processes.items():
            try:
                codes[step] = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[step] = process.wait()
        return codes

    def log_of(self, step_id: str) -> str:
        return (self.tmp_path / f"{step_id}.log").read_text(errors="replace")

    # --- messages ------------------------------------------------------------------------

    def publish(self, step_id: str, data: dict[str, Any], *, execution_id: str = "exec-1",
                message_id: str | None = None) -> str:
        message = Message(data=data, id=message_id or str(uuid.uuid4()), flow_id=self.flow_id,
                          step_id=step_id, execution_id=execution_id)
        self.channel.basic_publish(topology.exchange_name(self.flow_id),
                                   topology.input_key(step_id), envelope.encode(message),
                                   envelope.properties_of(message), mandatory=True)
        return message.id

    def sink(self, step_id: str) -> list[dict[str, Any]]:
        path = sink_path(self.flow_id, step_id, self.tmp_path)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def drain(self, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
        found = []
        while True:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return found
            found.append((properties, body))

    def reports(self) -> list[message_pb2.StepReport]:
        reports = []
        for _properties, body in self.drain(topology.reports_queue(self.flow_id)):
            batch = json_format.Parse(body, message_pb2.StepReportBatch())
            reports.extend(batch.reports)
        return reports

    def queue_depth(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    # --- cleanup -------------------------------------------------------------------------

    def close(self) -> None:
        self.stop_all()
        for log in self._logs:
            log.close()
        try:
            if self.specs:
                topology.delete_flow(self.channel, self.flow_id, list(self.specs))
                self.channel.queue_delete(self.snapshots_queue)
        finally:
            self.connection.close()


def totals(reports: list[message_pb2.StepReport], step_id: str) -> dict[str, int]:
    out = {"in": 0, "out": 0, "errors": 0, "dead": 0}
    for report in reports:
        if report.step_id == step_id:
            out["in"] += report.messages_in
            out["out"] += report.messages_out
            out["errors"] += report.errors
            out["dead"] += report.dead_lettered
    return out
