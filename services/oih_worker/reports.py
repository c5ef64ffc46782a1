"""Per-execution counters and samples of one step, batched into StepReportBatch JSON.

Reports are off the data path: they are published every `report_interval` (or after
`report_max_messages` counted messages) and never delay an ack. A crash loses the counts not yet
sent, and a redelivered message is counted again; the executions view is a view, not a ledger.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format

from oih.component.v1 import message_pb2

MAX_SAMPLES = 3
MAX_SAMPLE_BYTES = 16 * 1024
# Executions whose sample counts are remembered (so the cap of 3 holds across reports).
REMEMBERED_EXECUTIONS = 10_000


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def sample(data: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(data, separators=(",", ":")))
    return data if size <= MAX_SAMPLE_BYTES else {"truncated": True, "size": size}


@dataclass
class _Counts:
    messages_in: int = 0
    messages_out: int = 0
    messages_routed: int = 0
    errors: int = 0
    dead_lettered: int = 0
    input_samples: list[dict[str, Any]] = field(default_factory=list)
    output_samples: list[dict[str, Any]] = field(default_factory=list)
    last_error: message_pb2.ErrorEnvelope | None = None


class Reporter:
    def __init__(self, flow_id: str, step_id: str, worker: str = "") -> None:
        self.flow_id = flow_id
        self.step_id = step_id
        self.worker = worker or default_worker_name()
        self._pending: dict[str, _Counts] = {}
        self._counted = 0
        # execution id -> (input samples given, output samples given), oldest first.
        self._given: OrderedDict[str, list[int]] = OrderedDict()

    @property
    def counted(self) -> int:
        """Messages counted since the last batch."""
        return self._counted

    def received(self, execution_id: str, data: dict[str, Any]) -> None:
        counts = self._counts(execution_id)
        counts.messages_in += 1
        self._counted += 1
        given = self._given_for(execution_id)
        if given[0] < MAX_SAMPLES:
            given[0] += 1
            counts.input_samples.append(sample(data))

    def emitted(self, execution_id: str, outputs: list[dict[str, Any]], routed: int) -> None:
        """A success: the function emitted `outputs`; `routed` deliveries to successor steps
        were published for them (one per output and edge whose condition held)."""
        counts = self._counts(execution_id)
        counts.messages_out += len(outputs)
        counts.messages_routed += routed
        given = self._given_for(execution_id)
        for data in outputs:
            if given[1] >= MAX_SAMPLES:
                break
            given[1] += 1
            counts.output_samples.append(sample(data))

    def failed(self, execution_id: str, error: message_pb2.ErrorEnvelope | None,
               dead_lettered: bool) -> None:
        counts = self._counts(execution_id)
        counts.errors += 1
        if dead_lettered:
            counts.dead_lettered += 1
        if error is not None:
            last = message_pb2.ErrorEnvelope()
            last.CopyFrom(error)
            last.ClearField("input")
            counts.last_error = last

    def take_batch(self) -> bytes | None:
        """The StepReportBatch JSON of everything counted since the last call, or None."""
        if not self._pending:
            return None
        batch = message_pb2.StepReportBatch(id=str(uuid.uuid4()), worker=self.worker)
        batch.time.FromDatetime(datetime.now(UTC))
        for execution_id, counts in self._pending.items():
            report = batch.reports.add(
                flow_id=self.flow_id, step_id=self.step_id, execution_id=execution_id,
                messages_in=counts.messages_in, messages_out=counts.messages_out,
                messages_routed=counts.messages_routed, errors=counts.errors,
                dead_lettered=counts.dead_lettered)
            for data in counts.input_samples:
                report.input_samples.add().update(data)
            for data in counts.output_samples:
                report.output_samples.add().update(data)
            if counts.last_error is not None:
                report.last_error.CopyFrom(counts.last_error)
        self._pending = {}
        self._counted = 0
        return json_format.MessageToJson(batch, indent=None).encode()

    def _counts(self, execution_id: str) -> _Counts:
        counts = self._pending.get(execution_id)
        if counts is None:
            counts = self._pending[execution_id] = _Counts()
        return counts

    def _given_for(self, execution_id: str) -> list[int]:
        given = self._given.get(execution_id)
        if given is None:
            given = self._given[execution_id] = [0, 0]
            if len(self._given) > REMEMBERED_EXECUTIONS:
                self._given.popitem(last=False)
        return given
