"""Starts and stops run off the event consumer's thread, ordered per flow, and survive a crash;
a stop merges the workers' last reports before the queues go."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from sqlmodel import Session

from oih.events.v1 import orchestrator_pb2 as answers
from oih.flows.v1 import flows_pb2
from oih.orchestrator.v1 import orchestrator_pb2 as pb
from oih_orchestrator.management import Management
from oih_orchestrator.models import STARTING, STOPPED, DeploymentRow
from oih_orchestrator.server import TABLES
from oih_runtime.db import make_engine
from oih_worker import topology
from tests.oih_orchestrator.conftest import Orchestrator, StartOrchestrator
from tests.oih_orchestrator.support import (
    python_component,
    sink_lines,
    three_step_flow,
    wait_for,
)

HANGING = "tests.oih_orchestrator.hanging_component:component"
SLOW_IMPORT = "tests.oih_orchestrator.slow_import_component:component"
SLOW_SINK = "tests.oih_orchestrator.slow_components:component"


def flow_id_of(flow: flows_pb2.Flow) -> str:
    return flow.name.split("/")[1]


def with_sink(builtins: dict[str, str], component: str, function: str = "sink"
              ) -> flows_pb2.Flow:
    flow = three_step_flow(builtins)
    flow.graph.nodes[2].component, flow.graph.nodes[2].function = component, function
    return flow


def nothing_left(orchestrator: Orchestrator, management: Management, flow_id: str) -> bool:
    return (flow_id not in orchestrator.driver.flows()
            and management.queues("/", topology.exchange_name(flow_id)) == []
            and management.users(f"oih-flow-{flow_id}.") == [])


def no_more_answers(orchestrator: Orchestrator, flow: flows_pb2.Flow, seconds: float) -> None:
    with pytest.raises(AssertionError, match="timed out"):
        extra = orchestrator.bus.answer(flow, timeout=seconds)
        raise ValueError(f"unexpected answer {extra.type}")


def row(data_dir: Path, flow_id: str) -> DeploymentRow | None:
    engine = make_engine(f"sqlite:///{data_dir / 'orchestrator.db'}", tables=TABLES)
    try:
        with Session(engine) as session:
            return session.get(DeploymentRow, flow_id)
    finally:
        engine.dispose()


def data(**fields: Any) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(fields)
    return value


@pytest.fixture(scope="module")
def hanging(components_channel: grpc.Channel) -> str:
    return python_component(components_channel, HANGING, "sink")


def test_a_start_that_hangs_delays_no_other_flow_and_a_stop_wins(
        orchestrator: Orchestrator, builtins: dict[str, str], hanging: str,
        management: Management, user_md: Any) -> None:
    """The hanging flow's start waits up to start_timeout (30 s here) for a worker that never
    consumes; meanwhile another flow starts, runs an `oih.flow.execute`, and stops."""
    stuck, good = with_sink(builtins, hanging), three_step_flow(builtins)
    stuck_id, good_id = flow_id_of(stuck), flow_id_of(good)
    began = time.monotonic()
    orchestrator.bus.starting(stuck)
    wait_for(lambda: orchestrator.driver.workers(stuck_id), 10, "the stuck flow's workers")
    orchestrator.bus.starting(good)
    assert orchestrator.bus.answer(good, timeout=15).type == "oih.flow.started"
    orchestrator.bus.execute(good, {"n": 4}, execution_id="while-stuck")
    lines = wait_for(lambda: sink_lines(orchestrator.data_dir, good_id), 10, "the good sink")
    assert lines[0]["data"] == {"n": 8, "seen": "transform"}
    orchestrator.bus.stopping(good)
    assert orchestrator.bus.answer(good, timeout=15).type == "oih.flow.stopped"
    assert time.monotonic() - began < 25  # all of it while the stuck start was still waiting

    # The stuck flow is still starting; a stop now wins: no started, no failed, nothing left.
    stuck_row = row(orchestrator.data_dir, stuck_id)
    assert stuck_row is not None and stuck_row.state == STARTING
    orchestrator.bus.stopping(stuck)
    assert orchestrator.bus.answer(stuck, timeout=15).type == "oih.flow.stopped"
    assert nothing_left(orchestrator, management, stuck_id)
    stopped_row = row(orchestrator.data_dir, stuck_id)
    assert stopped_row is not None and stopped_row.state == STOPPED
    no_more_answers(orchestrator, stuck, 2)
    with pytest.raises(grpc.RpcError) as error:
        orchestrator.stub.StartExecution(pb.StartExecutionRequest(flow=stuck.name),
                                         metadata=user_md)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("pause", [0.0, 0.3, 1.5])
def test_start_then_immediate_stop_leaves_nothing_behind(
        orchestrator: Orchestrator, builtins: dict[str, str], management: Management,
        pause: float) -> None:
    flow = three_step_flow(builtins)
    flow_id = flow_id_of(flow)
    orchestrator.bus.starting(flow)
    time.sleep(pause)
    orchestrator.bus.stopping(flow)
    first = orchestrator.bus.answer(flow, timeout=30)
    if first.type == "oih.flow.started":  # the start won the race to the end; fine
        first = orchestrator.bus.answer(flow, timeout=30)
    assert first.type == "oih.flow.stopped", first
    no_more_answers(orchestrator, flow, 1)
    assert nothing_left(orchestrator, management, flow_id)
    stopped = row(orchestrator.data_dir, flow_id)
    assert stopped is not None and stopped.state == STOPPED
    assert list((orchestrator.data_dir / "workers" / flow_id).glob("*.pid")) == []


def test_stop_merges_the_workers_last_reports(
        orchestrator: Orchestrator, builtins: dict[str, str], components_channel: grpc.Channel,
        user_md: Any) -> None:
    """The sink is busy with the last execution when the stop comes: it finishes it, sends
    its last report, and the stop merges that before deleting the queues."""
    flow = with_sink(builtins, python_component(components_channel, SLOW_SINK, "slow_sink"),
                     "slow_sink")
    flow_id = flow_id_of(flow)
    orchestrator.bus.starting(flow)
    assert orchestrator.bus.answer(flow).type == "oih.flow.started"
    for n in range(3):
        orchestrator.stub.StartExecution(pb.StartExecutionRequest(
            flow=flow.name, data=data(n=n), execution_id=f"fast-{n}"), metadata=user_md)
    wait_for(lambda: len(sink_lines(orchestrator.data_dir, flow_id)) == 3, 20, "3 sink lines")
    orchestrator.stub.StartExecution(pb.StartExecutionRequest(
        flow=flow.name, data=data(n=50), execution_id="last"), metadata=user_md)
    busy = orchestrator.data_dir / "sinks" / flow_id / "sink.busy"
    wait_for(busy.exists, 20, "the sink to be busy with the last execution")
    orchestrator.bus.stopping(flow)
    assert orchestrator.bus.answer(flow).type == "oih.flow.stopped"
    assert len(sink_lines(orchestrator.data_dir, flow_id)) == 4  # finished, not cut short

    listed = orchestrator.stub.ListExecutions(pb.ListExecutionsRequest(parent=flow.name),
                                              metadata=user_md).executions
    states = {e.name.rsplit("/", 1)[-1]: pb.Execution.State.Name(e.state) for e in listed}
    assert states == {"fast-0": "STATE_SUCCEEDED", "fast-1": "STATE_SUCCEEDED",
                      "fast-2": "STATE_SUCCEEDED", "last": "STATE_SUCCEEDED"}
    last = orchestrator.stub.GetExecution(pb.GetExecutionRequest(
        name=f"{flow.name}/executions/last"), metadata=user_md)
    steps = {s.step_id: s for s in last.steps}
    assert {k: (s.messages_in, s.messages_out, s.messages_routed) for k, s in steps.items()} \
        == {"start": (1, 1, 1), "double": (1, 1, 1), "sink": (1, 0, 0)}
    assert {s.messages_routed for e in listed for s in e.steps if s.step_id != "sink"} == {1}


def test_a_start_cut_short_by_a_crash_is_finished_after_the_restart(
        start_orchestrator: StartOrchestrator, builtins: dict[str, str],
        components_channel: grpc.Channel, tmp_path: Path, management: Management,
        user_md: Any) -> None:
    exchange = f"test.oih.events.{uuid.uuid4().hex[:8]}"
    first = start_orchestrator(tmp_path, exchange, consumer="orchestrator-midstart")
    flow = with_sink(builtins, python_component(components_channel, SLOW_IMPORT, "sink"))
    flow_id = flow_id_of(flow)
    first.bus.starting(flow)
    wait_for(lambda: first.driver.workers(flow_id), 10, "the workers to be deployed")
    first.crash()  # mid-start: the sink's worker is still importing its component
    left = row(tmp_path, flow_id)
    assert left is not None and left.state == STARTING

    second = start_orchestrator(tmp_path, exchange, consumer="orchestrator-midstart")
    answer = second.bus.answer(flow, timeout=40)
    assert answer.type == "oih.flow.started", answer
    assert answer.source == "oih-orchestrator"
    assert sorted(w.step_id for w in second.driver.workers(flow_id)) == ["double", "sink",
                                                                          "start"]
    second.stub.StartExecution(pb.StartExecutionRequest(flow=flow.name, data=data(n=1)),
                               metadata=user_md)
    wait_for(lambda: second.stub.ListExecutions(
        pb.ListExecutionsRequest(parent=flow.name, filter="state=SUCCEEDED"),
        metadata=user_md).executions, 20, "the execution to succeed")
    second.bus.stopping(flow)
    assert second.bus.answer(flow).type == "oih.flow.stopped"
    assert nothing_left(second, management, flow_id)


def test_a_start_that_cannot_succeed_is_failed_after_the_restart(
        start_orchestrator: StartOrchestrator, builtins: dict[str, str], tmp_path: Path
        ) -> None:
    """A STARTING row left by a dead orchestrator whose flow cannot run: answered with
    `oih.flow.failed` and the reason, as the start itself would have."""
    flow = three_step_flow(builtins)
    flow.graph.nodes[1].component = "components/gone"
    flow_id = flow_id_of(flow)
    engine = make_engine(f"sqlite:///{tmp_path / 'orchestrator.db'}", tables=TABLES)
    with Session(engine) as session:
        session.add(DeploymentRow(flow_id=flow_id, tenant=flow.tenant, state=STARTING,
                                  started_by="users/alice", flow_version=1,
                                  flow=json_format.MessageToDict(flow)))
        session.commit()
    engine.dispose()
    orchestrator = start_orchestrator(tmp_path, f"test.oih.events.{uuid.uuid4().hex[:8]}",
                                      consumer="orchestrator-failstart")
    answer = orchestrator.bus.answer(flow, timeout=30)
    assert answer.type == "oih.flow.failed", answer
    failed = answers.FlowFailed()
    answer.data.Unpack(failed)
    assert "components/gone" in failed.reason and failed.tenant == flow.tenant
    no_more_answers(orchestrator, flow, 2)
