"""The executions view without a broker: merging reports, the state rule, list/get, retention."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from oih.component.v1 import message_pb2
from oih.events.v1 import event_pb2
from oih.events.v1 import orchestrator_pb2 as orchestrator_events
from oih.orchestrator.v1 import orchestrator_pb2
from oih_dataplane.spec import EdgeSpec, StepSpec
from oih_orchestrator.executions import (
    ExecutionRow,
    FlowShape,
    ReportsConsumer,
    RetentionSettings,
    StepExecutionRow,
    get_execution,
    ingest,
    list_executions,
    purge,
    record_replay,
    record_start,
    settle,
)
from oih_orchestrator.executions.consumer import _Followed
from oih_orchestrator.executions.state import Counts, Edge, state_of
from oih_orchestrator.server import TABLES
from oih_runtime.bus.models import OutboxEvent
from oih_runtime.db import make_engine, transaction
from oih_runtime.errors import InvalidArgument, NotFound
from oih_runtime.principal import Principal

T1, T2 = "tenants/t1", "tenants/t2"
ALICE = Principal("users/alice", T1, frozenset({"flows.read"}))
BOB = Principal("users/bob", T2, frozenset({"flows.read"}))
ADMIN = Principal("users/root", "tenants/ops", frozenset({"all"}))
NOW = datetime(2030, 1, 1, tzinfo=UTC)
Execution = orchestrator_pb2.Execution

# a → b (unconditional), b → c (conditional)
SPECS = [StepSpec("f1", "a", "m:c", "run", edges=[EdgeSpec("b")]),
         StepSpec("f1", "b", "m:c", "run", edges=[EdgeSpec("c", condition="data.ok")]),
         StepSpec("f1", "c", "m:c", "run")]
SHAPE = FlowShape.from_specs(SPECS)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'orch.db'}", tables=TABLES)
    yield engine
    engine.dispose()


def report(step: str, execution: str = "e1", flow: str = "f1", **counts: Any
           ) -> message_pb2.StepReport:
    samples_in = counts.pop("input_samples", [])
    samples_out = counts.pop("output_samples", [])
    error = counts.pop("last_error", None)
    result = message_pb2.StepReport(flow_id=flow, step_id=step, execution_id=execution, **counts)
    for data in samples_in:
        result.input_samples.add().update(data)
    for data in samples_out:
        result.output_samples.add().update(data)
    if error is not None:
        result.last_error.CopyFrom(error)
    return result


def batch(*reports: message_pb2.StepReport, batch_id: str = "") -> message_pb2.StepReportBatch:
    return message_pb2.StepReportBatch(id=batch_id or str(uuid.uuid4()), worker="w",
                                       reports=reports)


def feed(engine: Engine, *batches: message_pb2.StepReportBatch, tenant: str = T1,
         shape: FlowShape | None = SHAPE, now: datetime = NOW, flow: str = "f1") -> list[bool]:
    results = []
    for item in batches:
        with transaction(engine) as session:
            results.append(ingest(session, item, tenant, flow_id=flow, shape=shape, now=now))
    return results


def get(engine: Engine, name: str = "flows/f1/executions/e1",
        who: Principal = ALICE) -> orchestrator_pb2.Execution:
    return get_execution(engine, who, orchestrator_pb2.GetExecutionRequest(name=name))


# --- ingest --------------------------------------------------------------------------------

def test_counts_of_several_batches_add_up(engine: Engine) -> None:
    feed(engine, batch(report("a", messages_in=1, messages_out=2)),
         batch(report("b", messages_in=1, messages_out=1), report("b", "e2", messages_in=4)),
         batch(report("b", messages_in=1, messages_out=0, errors=1)))
    steps = {s.step_id: s for s in get(engine).steps}
    assert [s.step_id for s in get(engine).steps] == ["a", "b"]
    assert (steps["b"].messages_in, steps["b"].messages_out, steps["b"].errors) == (2, 1, 1)
    assert get(engine, "flows/f1/executions/e2").steps[0].messages_in == 4


def test_a_batch_counted_twice_is_ignored(engine: Engine) -> None:
    same = batch(report("a", messages_in=1, messages_out=1), batch_id="b-1")
    assert feed(engine, same, same) == [True, False]
    assert get(engine).steps[0].messages_in == 1


def test_samples_are_capped_at_three_and_16_kib(engine: Engine) -> None:
    big = {"blob": "x" * 20_000}
    feed(engine, batch(report("a", messages_in=2, input_samples=[{"n": 1}, big])),
         batch(report("a", messages_in=3, input_samples=[{"n": 3}, {"n": 4}, {"n": 5}],
                      output_samples=[{"o": i} for i in range(5)])))
    step = get(engine).steps[0]
    samples: list[dict[str, Any]] = [json_format.MessageToDict(s) for s in step.input_samples]
    assert len(samples) == 3
    assert samples[0] == {"n": 1} and samples[2] == {"n": 3}
    assert samples[1]["truncated"] is True and samples[1]["size"] > 16 * 1024
    assert len(step.output_samples) == 3


def test_last_error_is_kept_without_input(engine: Engine) -> None:
    error = message_pb2.ErrorEnvelope(message="boom", error_type="ValueError", attempt=2,
                                      stack="trace")
    feed(engine, batch(report("a", messages_in=1, errors=1, last_error=error)))
    last = get(engine).steps[0].last_error
    assert (last.message, last.error_type, last.attempt, last.stack) == (
        "boom", "ValueError", 2, "trace")


def test_reports_of_another_flow_on_a_flows_queue_are_ignored(engine: Engine) -> None:
    feed(engine, batch(report("a", flow="other", messages_in=1)))
    with Session(engine) as session:
        assert session.exec(select(ExecutionRow)).all() == []


def test_reports_cannot_touch_another_tenants_execution(engine: Engine) -> None:
    feed(engine, batch(report("a", messages_in=1, messages_out=1)), tenant=T1)
    feed(engine, batch(report("a", messages_in=50)), tenant=T2)
    assert get(engine).steps[0].messages_in == 1


# --- the state rule --------------------------------------------------------------------------

def test_execution_runs_until_every_delivery_was_received_then_succeeds(engine: Engine) -> None:
    feed(engine, batch(report("a", messages_in=1, messages_out=2, messages_routed=2)))
    assert get(engine).state == Execution.STATE_RUNNING
    feed(engine, batch(report("b", messages_in=1, messages_out=0)))
    assert get(engine).state == Execution.STATE_RUNNING  # b still owes one input
    feed(engine, batch(report("b", messages_in=1, messages_out=0)))
    execution = get(engine)
    assert execution.state == Execution.STATE_SUCCEEDED
    assert execution.HasField("end_time")


def finished_events(engine: Engine) -> list[tuple[str, bool]]:
    with Session(engine) as session:
        rows = session.exec(select(OutboxEvent).where(
            OutboxEvent.event_type == "oih.execution.finished")).all()
    found = []
    for row in rows:
        event = event_pb2.Event.FromString(row.body)
        payload = orchestrator_events.ExecutionFinished()
        event.data.Unpack(payload)
        assert payload.tenant == T1 and row.tenant == T1
        found.append((payload.execution, payload.succeeded))
    return found


def test_finishing_is_announced_once_per_end(engine: Engine) -> None:
    """`oih.execution.finished` (for the Snapshots service and the Scheduler) when an execution
    becomes SUCCEEDED or FAILED, and again after a replay ends it anew."""
    feed(engine, batch(report("a", messages_in=1, messages_out=1, messages_routed=1)))
    assert finished_events(engine) == []
    feed(engine, batch(report("b", messages_in=1, errors=1, dead_lettered=1)))
    assert finished_events(engine) == [("flows/f1/executions/e1", False)]
    feed(engine, batch(report("a", "other", messages_in=1, errors=1)))  # still RUNNING
    assert len(finished_events(engine)) == 1
    with transaction(engine) as session:
        record_replay(session, tenant=T1, flow_id="f1", execution_id="e1", step_id="b")
    feed(engine, batch(report("b", messages_in=1, messages_out=0)))
    assert finished_events(engine) == [("flows/f1/executions/e1", False),
                                       ("flows/f1/executions/e1", True)]


def test_a_successors_report_arriving_first_does_not_finish_the_execution(
        engine: Engine) -> None:
    feed(engine, batch(report("b", messages_in=1, messages_out=0)))
    assert get(engine).state == Execution.STATE_RUNNING
    feed(engine, batch(report("a", messages_in=1, messages_out=1, messages_routed=1)))
    assert get(engine).state == Execution.STATE_SUCCEEDED


def test_a_scheduled_retry_keeps_the_execution_running(engine: Engine) -> None:
    feed(engine, batch(report("a", messages_in=1, errors=1)))
    assert get(engine).state == Execution.STATE_RUNNING
    feed(engine, batch(report("a", messages_in=1, messages_out=0)))
    assert get(engine).state == Execution.STATE_SUCCEEDED


def test_a_dead_letter_fails_the_execution_and_a_replay_reopens_it(engine: Engine) -> None:
    feed(engine, batch(report("a", messages_in=1, messages_out=1, messages_routed=1)),
         batch(report("b", messages_in=1, errors=1, dead_lettered=1)))
    execution = get(engine)
    assert execution.state == Execution.STATE_FAILED
    assert execution.steps[1].dead_lettered == 1
    with transaction(engine) as session:
        record_replay(session, tenant=T1, flow_id="f1", execution_id="e1", step_id="b")
    assert get(engine).state == Execution.STATE_RUNNING
    assert not get(engine).HasField("end_time")
    feed(engine, batch(report("b", messages_in=1, messages_out=0)))
    assert get(engine).state == Execution.STATE_SUCCEEDED


def test_a_condition_that_dropped_messages_settles_at_once(engine: Engine) -> None:
    """b → c has a condition: b's routed count says how many passed, so no waiting."""
    feed(engine, batch(report("a", messages_in=1, messages_out=3, messages_routed=3)),
         batch(report("b", messages_in=3, messages_out=3, messages_routed=1)))
    assert get(engine).state == Execution.STATE_RUNNING  # the one that passed is owed to c
    feed(engine, batch(report("c", messages_in=1)))
    assert get(engine).state == Execution.STATE_SUCCEEDED
    # Every message dropped by the condition: settled without any report of c.
    feed(engine, batch(report("a", "e2", messages_in=1, messages_out=2, messages_routed=2),
                       report("b", "e2", messages_in=2, messages_out=2, messages_routed=0)))
    assert get(engine, "flows/f1/executions/e2").state == Execution.STATE_SUCCEEDED


def test_racing_reports_stay_running_until_consistent() -> None:
    # a → b: b's report came first. The sums agree (b received 1 = 1 trigger), but the
    # entry step has not reported its trigger yet.
    line = FlowShape(frozenset({"a", "b"}), (Edge("a", "b"),))
    assert state_of({"b": Counts(1)}, 1, line) == ("RUNNING", "outstanding")
    assert state_of({"b": Counts(1), "a": Counts(1, 1, messages_routed=1)}, 1, line) == (
        "SUCCEEDED", "settled")
    # a → b → c with a condition on b → c: c's report before b's.
    steps = {"a": Counts(1, 1, messages_routed=1), "c": Counts(1)}
    assert state_of(steps, 1, SHAPE)[0] == "RUNNING"
    steps["b"] = Counts(1, 1, messages_routed=1)
    assert state_of(steps, 1, SHAPE)[0] == "SUCCEEDED"
    # A retry's report is in, the retried delivery's is not: b owes one more.
    steps["b"] = Counts(2, 1, errors=1, messages_routed=1)
    assert state_of(steps, 1, SHAPE)[0] == "SUCCEEDED"
    steps["b"] = Counts(1, 0, errors=1)
    assert state_of(steps, 1, SHAPE)[0] == "RUNNING"


def test_two_conditional_edges_bound_each_branch() -> None:
    """a → b and a → c, both filtered: a's routed count is shared by the two."""
    shape = FlowShape(frozenset({"a", "b", "c"}),
                      (Edge("a", "b", True), Edge("a", "c", True)))
    a = Counts(1, 2, messages_routed=3)  # 2 outputs, 3 deliveries
    assert state_of({"a": a, "b": Counts(2)}, 1, shape)[0] == "RUNNING"
    assert state_of({"a": a, "b": Counts(2), "c": Counts(1)}, 1, shape)[0] == "SUCCEEDED"
    assert state_of({"a": a, "b": Counts(3)}, 1, shape)[0] == "RUNNING"  # b got at most 2


def test_counters_that_no_delivery_explains_are_outstanding() -> None:
    # More deliveries than outputs x edges: a report is missing or counted twice.
    shape = FlowShape(frozenset({"a", "b"}), (Edge("a", "b", True),))
    assert state_of({"a": Counts(1, 1, messages_routed=2), "b": Counts(2)}, 1, shape)[0] == \
        "RUNNING"


def test_without_the_graph_only_a_dead_letter_decides() -> None:
    assert state_of({"a": Counts(1, 0)}, 1, None) == ("RUNNING", "unknown")
    assert state_of({"a": Counts(1, 0, 1, 1)}, 1, None) == ("FAILED", "unknown")


def test_fan_out_to_two_successors_needs_both() -> None:
    shape = FlowShape(frozenset({"a", "b", "c"}), (Edge("a", "b"), Edge("a", "c")))
    steps = {"a": Counts(1, 1, messages_routed=2), "b": Counts(1, 0)}
    assert state_of(steps, 1, shape)[0] == "RUNNING"
    steps["c"] = Counts(1, 0)
    assert state_of(steps, 1, shape)[0] == "SUCCEEDED"


def test_stuck_executions_are_closed_after_the_stale_period(engine: Engine) -> None:
    feed(engine, batch(report("a", messages_in=1, messages_out=1, messages_routed=1)))
    # b's report was lost (its worker crashed before sending it)
    settings = RetentionSettings(stale_seconds=3600)
    assert settle(engine, NOW + timedelta(seconds=60), settings) == 0
    assert settle(engine, NOW + timedelta(hours=2), settings) == 1


def test_record_start_keeps_source_and_version(engine: Engine) -> None:
    with transaction(engine) as session:
        record_start(session, tenant=T1, flow_id="f1", execution_id="e1", source="scheduler",
                     flow_version=3, now=NOW)
    feed(engine, batch(report("a", messages_in=1, messages_out=0)))
    execution = get(engine)
    assert (execution.source, execution.flow_version) == ("scheduler", 3)
    assert execution.state == Execution.STATE_SUCCEEDED


# --- list / get ------------------------------------------------------------------------------

def _seed(engine: Engine) -> None:
    for index in range(5):
        feed(engine, batch(report("a", f"e{index}", messages_in=1, messages_out=0)),
             now=NOW + timedelta(seconds=index))
    feed(engine, batch(report("a", "e9", messages_in=1, errors=1, dead_lettered=1)),
         now=NOW + timedelta(seconds=9))
    feed(engine, batch(report("a", "x1", flow="f2", messages_in=1)), tenant=T2, flow="f2")


def _list(engine: Engine, who: Principal = ALICE, **fields: Any
          ) -> orchestrator_pb2.ListExecutionsResponse:
    fields.setdefault("parent", "flows/f1")
    return list_executions(engine, who, orchestrator_pb2.ListExecutionsRequest(**fields))


def test_list_pages_newest_first(engine: Engine) -> None:
    _seed(engine)
    first = _list(engine, page_size=4)
    assert [e.name.rsplit("/", 1)[1] for e in first.executions] == ["e9", "e4", "e3", "e2"]
    second = _list(engine, page_size=4, page_token=first.next_page_token)
    assert [e.name.rsplit("/", 1)[1] for e in second.executions] == ["e1", "e0"]
    assert second.next_page_token == ""


def test_list_filters_by_state(engine: Engine) -> None:
    _seed(engine)
    failed = _list(engine, filter="state=FAILED")
    assert [e.name for e in failed.executions] == ["flows/f1/executions/e9"]
    assert len(_list(engine, filter="state=SUCCEEDED").executions) == 5


@pytest.mark.parametrize("text", ["state=DONE", "color=red", "state>FAILED", "(("])
def test_list_refuses_a_bad_filter(engine: Engine, text: str) -> None:
    with pytest.raises(InvalidArgument):
        _list(engine, filter=text)


def test_list_of_every_flow_shows_only_the_callers_tenant(engine: Engine) -> None:
    _seed(engine)
    assert {e.flow for e in _list(engine, parent="flows/-").executions} == {"flows/f1"}
    assert {e.flow for e in _list(engine, BOB, parent="flows/-").executions} == {"flows/f2"}
    assert len(_list(engine, ADMIN, parent="flows/-").executions) == 7


def test_list_of_another_tenants_flow_is_not_found(engine: Engine) -> None:
    _seed(engine)
    tenants = {"f1": T1, "f2": T2}
    with pytest.raises(NotFound):
        list_executions(engine, ALICE, orchestrator_pb2.ListExecutionsRequest(
            parent="flows/f2"), flow_tenant=tenants.get)
    assert _list(engine, parent="flows/f2").executions == []  # without a lookup: empty


def test_get_execution_of_another_tenant_is_not_found(engine: Engine) -> None:
    _seed(engine)
    with pytest.raises(NotFound) as raised:
        get(engine, "flows/f1/executions/e1", who=BOB)
    assert raised.value.reason == "EXECUTION_NOT_FOUND"
    assert get(engine, "flows/f1/executions/e1", who=ADMIN).state == Execution.STATE_SUCCEEDED


@pytest.mark.parametrize("name", ["flows/f1", "flows/f1/executions/", "executions/e1"])
def test_get_with_a_bad_name_is_invalid(engine: Engine, name: str) -> None:
    with pytest.raises(InvalidArgument):
        get(engine, name)


# --- retention -------------------------------------------------------------------------------

def test_purge_deletes_old_executions_and_keeps_a_maximum_per_flow(engine: Engine) -> None:
    _seed(engine)
    later = NOW + timedelta(days=3)
    feed(engine, batch(report("a", "new", messages_in=1, messages_out=0)), now=later)
    settings = RetentionSettings(retention_days=7, max_per_flow=3)
    assert purge(engine, NOW + timedelta(days=1), settings) == 4  # f1 keeps its newest 3
    with Session(engine) as session:
        kept = {(r.flow_id, r.execution_id) for r in session.exec(select(ExecutionRow))}
        assert kept == {("f1", "new"), ("f1", "e9"), ("f1", "e4"), ("f2", "x1")}
        orphans = session.exec(select(StepExecutionRow).where(
            StepExecutionRow.execution_id == "e0")).all()
        assert orphans == []
    assert purge(engine, later + timedelta(days=6), settings) == 3
    assert purge(engine, later + timedelta(days=8), settings) == 1
    with pytest.raises(NotFound):
        get(engine, "flows/f1/executions/new")


def test_retention_settings_come_from_the_environment() -> None:
    settings = RetentionSettings.from_env({"OIH_ORCHESTRATOR_EXECUTION_RETENTION_DAYS": "2",
                                           "OIH_ORCHESTRATOR_EXECUTION_MAX_PER_FLOW": "9"})
    assert (settings.retention_days, settings.max_per_flow) == (2.0, 9)
    assert RetentionSettings.from_env({}).retention_days == 7.0


def test_a_report_racing_the_start_record_of_its_execution_is_merged_not_dropped(
        engine: Engine) -> None:
    # The start recorder (catching up after a database outage, say) inserts the execution
    # between the consumer's read, which did not find it, and its insert.
    consumer = ReportsConsumer(engine, "amqp://unused")
    raced: list[bool] = []

    def start_recorded_meanwhile(session: Session, *_: object) -> None:
        if raced or not any(isinstance(row, ExecutionRow) for row in session.new):
            return
        raced.append(True)
        with transaction(engine) as other:  # another connection, committed first
            record_start(other, tenant=T1, flow_id="f1", execution_id="e1", now=NOW)

    body = json_format.MessageToJson(message_pb2.StepReportBatch(  # no id: nothing flushed
        worker="w", reports=[report("a", messages_in=1, messages_out=2)]), indent=None)
    event.listen(Session, "before_flush", start_recorded_meanwhile)
    try:
        assert consumer._merge(body.encode(), _Followed(T1, SHAPE), "f1")
    finally:
        event.remove(Session, "before_flush", start_recorded_meanwhile)
    assert raced
    with Session(engine) as session:
        step = session.get(StepExecutionRow, ("f1", "e1", "a"))
        assert step is not None and (step.messages_in, step.messages_out) == (1, 2)
        execution = session.get(ExecutionRow, ("f1", "e1"))
        assert execution is not None and execution.source == "api"
