"""Merging StepReportBatches into the executions view (idempotent), and the other writers:
the start of an execution and the replay of a dead letter.

All functions work inside the caller's session and do not commit: the ReportsConsumer commits
and only then acks the batch, so a crash in between redelivers the batch and its recorded id
makes the second delivery a no-op.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from sqlmodel import Session, select

from oih.component.v1 import message_pb2
from oih.events.v1 import orchestrator_pb2 as orchestrator_events
from oih_runtime.bus import Outbox
from oih_runtime.clock import utcnow
from oih_worker.reports import MAX_SAMPLE_BYTES, MAX_SAMPLES, sample

from . import state as rule
from .models import ExecutionRow, ExecutionState, ReportBatchRow, StepExecutionRow

log = logging.getLogger(__name__)

MAX_STACK = 16 * 1024
FINISHED = "oih.execution.finished"
#: The orchestrator's outbox (the same source as its lifecycle events).
OUTBOX = Outbox("oih-orchestrator")


def ingest(session: Session, batch: message_pb2.StepReportBatch, tenant: str, *,
           flow_id: str | None = None, shape: rule.FlowShape | None = None,
           now: datetime | None = None) -> bool:
    """Add a batch's counters to its executions and re-decide their states. Returns False
    when the batch was counted before (nothing changes).

    `tenant` owns the executions the batch creates. `flow_id`, when given, is the flow whose
    reports queue the batch came from: reports naming another flow are ignored (a component
    can publish to its own flow's exchange, so it must not be able to write into another
    flow's view). Reports for an execution of another tenant are ignored for the same reason.
    """
    now = now or utcnow()
    if batch.id:
        if session.get(ReportBatchRow, batch.id) is not None:
            return False
        session.add(ReportBatchRow(id=batch.id, receive_time=now))
        # Flushed now so that a replica counting the same batch concurrently fails here
        # (IntegrityError) before doing any work.
        session.flush()
    # Without autoflush, and one flush before the states are decided: autoflush flushed the
    # rows changed so far before every query, once per report (py-spy: a third of the merge
    # under a trigger burst). Rows added by this batch are found in `touched` and `steps`,
    # since a query without the flush would not see them.
    touched: dict[tuple[str, str], ExecutionRow] = {}
    steps: dict[tuple[str, str, str], StepExecutionRow] = {}
    with session.no_autoflush:
        for report in batch.reports:
            if flow_id is not None and report.flow_id != flow_id:
                log.warning("ignored a report for flow %s on the reports queue of flow %s",
                            report.flow_id, flow_id)
                continue
            if not report.execution_id or not report.step_id:
                continue  # e.g. a malformed input: it has no execution; it is a dead letter
            execution = touched.get((report.flow_id, report.execution_id)) or _execution(
                session, tenant, report.flow_id, report.execution_id, now)
            if execution is None:
                continue
            key = (execution.flow_id, execution.execution_id, report.step_id)
            step = steps.get(key) or _step(session, execution, report.step_id)
            steps[key] = step
            _merge(step, report)
            touched[(execution.flow_id, execution.execution_id)] = execution
    session.flush()
    with session.no_autoflush:  # steps_of reads only step rows, all flushed above
        for execution in touched.values():
            decide(session, execution, shape, now)
    return True


def record_start(session: Session, *, tenant: str, flow_id: str, execution_id: str,
                 source: str = "api", flow_version: int = 0,
                 now: datetime | None = None) -> ExecutionRow:
    """The execution StartExecution (or a trigger) just began. Reports may have come first;
    the row then exists and only gets its source and version."""
    now = now or utcnow()
    execution = _execution(session, tenant, flow_id, execution_id, now)
    if execution is None:
        raise ValueError(f"execution {execution_id} of flow {flow_id} belongs to another tenant")
    execution.source = execution.source or source
    execution.flow_version = execution.flow_version or flow_version
    session.add(execution)
    return execution


def record_replay(session: Session, *, tenant: str, flow_id: str, execution_id: str,
                  step_id: str, now: datetime | None = None) -> ExecutionRow:
    """A dead letter of `step_id` was published to the step again: one more delivery is owed
    to it, so the execution is RUNNING until the step reports it."""
    now = now or utcnow()
    execution = _execution(session, tenant, flow_id, execution_id, now)
    if execution is None:
        raise ValueError(f"execution {execution_id} of flow {flow_id} belongs to another tenant")
    # An execution the view no longer knew (swept by retention) comes back as a replay.
    execution.source = execution.source or "replay"
    step = _step(session, execution, step_id)
    step.replayed += 1
    session.add(step)
    execution.state, execution.progress = ExecutionState.RUNNING, rule.OUTSTANDING
    execution.end_time = None
    execution.update_time = now
    session.add(execution)
    return execution


def steps_of(session: Session, execution: ExecutionRow) -> list[StepExecutionRow]:
    return list(session.exec(
        select(StepExecutionRow)
        .where(StepExecutionRow.flow_id == execution.flow_id,
               StepExecutionRow.execution_id == execution.execution_id)
        .order_by(StepExecutionRow.position)).all())  # type: ignore[arg-type]


def counts_of(steps: list[StepExecutionRow]) -> dict[str, rule.Counts]:
    return {step.step_id: rule.Counts(
        messages_in=step.messages_in, messages_out=step.messages_out, errors=step.errors,
        dead_lettered=step.dead_lettered, replayed=step.replayed,
        messages_routed=step.messages_routed) for step in steps}


def decide(session: Session, execution: ExecutionRow, shape: rule.FlowShape | None,
           now: datetime) -> None:
    counts = counts_of(steps_of(session, execution))
    state, kind = rule.state_of(counts, execution.triggers, shape)
    finish(session, execution, state, kind, now)
    session.add(execution)


def finish(session: Session, execution: ExecutionRow, state: str, kind: str,
           now: datetime) -> None:
    """Set the state; `end_time` is when it last became SUCCEEDED or FAILED. Becoming
    SUCCEEDED or FAILED is announced (`oih.execution.finished`, in the same transaction): the
    Snapshots service removes the execution's snapshots, the Scheduler learns the run is over."""
    if state == ExecutionState.RUNNING:
        execution.end_time = None
    elif execution.state == ExecutionState.RUNNING or execution.end_time is None:
        execution.end_time = now
        OUTBOX.add(session, FINISHED, orchestrator_events.ExecutionFinished(
            execution=f"flows/{execution.flow_id}/executions/{execution.execution_id}",
            succeeded=state == ExecutionState.SUCCEEDED, tenant=execution.tenant),
            tenant=execution.tenant, subject=f"flows/{execution.flow_id}")
    execution.state, execution.progress = state, kind
    execution.update_time = now


# --- rows ----------------------------------------------------------------------------------

def _execution(session: Session, tenant: str, flow_id: str, execution_id: str,
               now: datetime) -> ExecutionRow | None:
    # FOR UPDATE (a no-op on SQLite, which serializes writers anyway): two replicas merging
    # reports of one execution on PostgreSQL would otherwise lose one's increments.
    execution = session.exec(
        select(ExecutionRow).where(ExecutionRow.flow_id == flow_id,
                                   ExecutionRow.execution_id == execution_id)
        .with_for_update()).first()
    if execution is None:
        execution = ExecutionRow(flow_id=flow_id, execution_id=execution_id, tenant=tenant,
                                 create_time=now, update_time=now)
        session.add(execution)
    elif execution.tenant != tenant:
        log.warning("ignored a report for execution %s of flow %s: other tenant",
                    execution_id, flow_id)
        return None
    return execution


def _step(session: Session, execution: ExecutionRow, step_id: str) -> StepExecutionRow:
    key = (execution.flow_id, execution.execution_id, step_id)
    step = session.get(StepExecutionRow, key)
    if step is None:
        step = StepExecutionRow(flow_id=key[0], execution_id=key[1], step_id=step_id,
                                position=execution.next_position)
        execution.next_position += 1
        session.add(step)
    return step


def _merge(step: StepExecutionRow, report: message_pb2.StepReport) -> None:
    step.messages_in += max(report.messages_in, 0)
    step.messages_out += max(report.messages_out, 0)
    step.messages_routed += max(report.messages_routed, 0)
    step.errors += max(report.errors, 0)
    step.dead_lettered += max(report.dead_lettered, 0)
    # New lists, not in-place appends: the JSON columns are not mutation-tracked.
    step.input_samples = _capped(step.input_samples, report.input_samples)
    step.output_samples = _capped(step.output_samples, report.output_samples)
    if report.HasField("last_error"):
        step.last_error = error_record(report.last_error)


def _capped(kept: list[dict[str, Any]], new: Any) -> list[dict[str, Any]]:
    """The worker caps samples already; enforced again because reports are untrusted input."""
    result = list(kept or [])
    for struct in new:
        if len(result) >= MAX_SAMPLES:
            break
        data = json_format.MessageToDict(struct)
        result.append(sample(data) if _size(data) > MAX_SAMPLE_BYTES else data)
    return result


def _size(data: dict[str, Any]) -> int:
    return len(json.dumps(data, separators=(",", ":")))


def error_record(error: message_pb2.ErrorEnvelope) -> dict[str, Any]:
    """An ErrorEnvelope (without input) as the JSON form of an `ErrorRecord`."""
    record: dict[str, Any] = {"message": error.message[:MAX_STACK],
                              "errorType": error.error_type[:200],
                              "stack": error.stack[-MAX_STACK:], "attempt": error.attempt}
    if error.HasField("time"):
        record["time"] = error.time.ToJsonString()
    return record
