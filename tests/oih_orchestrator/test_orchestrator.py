"""The orchestrator end to end: events in, workers and queues out, messages through the flow."""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

import grpc
import pika
import pika.exceptions
import pytest
from google.protobuf import struct_pb2

from oih.events.v1 import orchestrator_pb2 as answers
from oih.flows.v1 import flows_pb2
from oih.orchestrator.v1 import orchestrator_pb2 as pb
from oih_cli.broker import PrivateBroker
from oih_dataplane import topology
from oih_dataplane.spec import StepSpec
from oih_orchestrator.management import Management, user_name
from tests.oih_orchestrator.conftest import Orchestrator
from tests.oih_orchestrator.support import (
    EXPRESSION,
    sink_lines,
    three_step_flow,
    wait_for,
)

STEPS = ("start", "double", "sink")


def start(orchestrator: Orchestrator, flow: flows_pb2.Flow) -> Any:
    orchestrator.bus.starting(flow)
    return orchestrator.bus.answer(flow)


def runtime(orchestrator: Orchestrator, flow: flows_pb2.Flow, md: Any) -> pb.FlowRuntime:
    return orchestrator.stub.GetFlowRuntime(pb.GetFlowRuntimeRequest(name=f"{flow.name}/runtime"),
                                            metadata=md)


def flow_queues(management: Management, flow_id: str) -> list[str]:
    return [q["name"] for q in management.queues("/", f"oih.flow.{flow_id}")]


def data(**fields: Any) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(fields)
    return value


# --- the happy path ---------------------------------------------------------------------------

def test_started_flow_runs_100_executions_and_stop_removes_everything(
        orchestrator: Orchestrator, builtins: dict[str, str], management: Management,
        user_md: Any) -> None:
    flow = three_step_flow(builtins)
    flow_id = flow.name.split("/")[1]

    answer = start(orchestrator, flow)
    assert answer.type == "oih.flow.started", answer
    state = answers.FlowStateChanged()
    answer.data.Unpack(state)
    assert state.tenant == flow.tenant and answer.source == "oih-orchestrator"

    seen = runtime(orchestrator, flow, user_md)
    assert seen.driver == "local" and seen.flow_version == 1
    assert sorted(w.step_id for w in seen.workers) == sorted(STEPS)
    assert all(w.instance.startswith("pid:") for w in seen.workers)
    assert [q.queue for q in seen.queues] == [topology.step_queue(flow_id, s) for s in STEPS]
    # One broker user per step, with exactly the step's permissions.
    for step in STEPS:
        assert management.permissions("/", user_name(flow_id, step)) == \
            topology.step_permissions(flow_id, step)

    # Half through the RPC, half through `oih.flow.execute`, as the Flow Repository sends it.
    for n in range(50):
        orchestrator.stub.StartExecution(pb.StartExecutionRequest(
            flow=flow.name, data=data(n=n), execution_id=f"rpc-{n}"), metadata=user_md)
    for n in range(50, 100):
        orchestrator.bus.execute(flow, {"n": n}, execution_id=f"event-{n}")
    lines = wait_for(lambda: len(sink_lines(orchestrator.data_dir, flow_id)) >= 100 and
                     sink_lines(orchestrator.data_dir, flow_id), 60, "100 sink lines")
    assert sorted(line["data"]["n"] for line in lines) == [2 * n for n in range(100)]
    assert {line["data"]["seen"] for line in lines} == {"transform"}
    assert {line["execution_id"] for line in lines} == \
        {f"rpc-{n}" for n in range(50)} | {f"event-{n}" for n in range(50, 100)}

    # A retried StartExecution with the same id runs nothing again.
    again = orchestrator.stub.StartExecution(pb.StartExecutionRequest(
        flow=flow.name, data=data(n=1000), execution_id="rpc-7"), metadata=user_md)
    assert again.name == f"{flow.name}/executions/rpc-7"

    orchestrator.bus.stopping(flow)
    answer = orchestrator.bus.answer(flow)
    assert answer.type == "oih.flow.stopped", answer
    assert orchestrator.driver.workers(flow_id) == []
    assert flow_id not in orchestrator.driver.flows()
    assert flow_queues(management, flow_id) == []
    assert management.users(f"oih-flow-{flow_id}.") == []
    assert len(sink_lines(orchestrator.data_dir, flow_id)) == 100  # rpc-7 did not run twice
    with pytest.raises(grpc.RpcError) as error:
        runtime(orchestrator, flow, user_md)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_flow_of_another_tenant_is_not_found(orchestrator: Orchestrator,
                                             builtins: dict[str, str], other_tenant_md: Any,
                                             user_md: Any) -> None:
    flow = three_step_flow(builtins)
    assert start(orchestrator, flow).type == "oih.flow.started"
    try:
        for call in (lambda md: runtime(orchestrator, flow, md),
                     lambda md: orchestrator.stub.StartExecution(
                         pb.StartExecutionRequest(flow=flow.name, data=data(n=1)), metadata=md)):
            with pytest.raises(grpc.RpcError) as error:
                call(other_tenant_md)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as error:
            orchestrator.stub.StartExecution(pb.StartExecutionRequest(flow=flow.name),
                                             metadata=())
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert runtime(orchestrator, flow, user_md).workers
    finally:
        orchestrator.bus.stopping(flow)
        assert orchestrator.bus.answer(flow).type == "oih.flow.stopped"


def test_execution_of_a_flow_that_does_not_run_is_refused(orchestrator: Orchestrator,
                                                          user_md: Any) -> None:
    with pytest.raises(grpc.RpcError) as error:
        orchestrator.stub.StartExecution(pb.StartExecutionRequest(flow="flows/nothing-here"),
                                         metadata=user_md)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        orchestrator.stub.StartExecution(pb.StartExecutionRequest(
            flow="flows/x", execution_id="not valid!"), metadata=user_md)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_executions_with_a_condition_that_drops_messages_succeed_without_waiting(
        orchestrator: Orchestrator, builtins: dict[str, str], user_md: Any) -> None:
    """Real workers report how many deliveries passed the condition, so an execution whose
    message the condition dropped is SUCCEEDED as soon as the reports are in — well before the
    sweep (every 60 s) could close it for being quiet."""
    flow = three_step_flow(builtins)
    flow.graph.edges[0].condition = "data.n >= 3"
    flow_id = flow.name.split("/")[1]
    assert start(orchestrator, flow).type == "oih.flow.started"
    try:
        for n in range(6):
            orchestrator.stub.StartExecution(pb.StartExecutionRequest(
                flow=flow.name, data=data(n=n), execution_id=f"cond-{n}"), metadata=user_md)

        def states() -> dict[int, Any] | None:
            found = {n: orchestrator.stub.GetExecution(pb.GetExecutionRequest(
                name=f"{flow.name}/executions/cond-{n}"), metadata=user_md) for n in range(6)}
            done = all(e.state == pb.Execution.STATE_SUCCEEDED for e in found.values())
            return found if done else None
        executions = wait_for(states, 20, "every execution SUCCEEDED")
        assert sorted(line["data"]["n"] for line in sink_lines(orchestrator.data_dir, flow_id)
                      ) == [6, 8, 10]
        dropped = {s.step_id: s for s in executions[0].steps}
        assert set(dropped) == {"start"} and dropped["start"].messages_out == 1
        assert dropped["start"].messages_routed == 0  # the condition let it go nowhere
        passed = {s.step_id: s.messages_in for s in executions[4].steps}
        assert passed == {"start": 1, "double": 1, "sink": 1}
        routed = {s.step_id: s.messages_routed for s in executions[4].steps}
        assert routed == {"start": 1, "double": 1, "sink": 0}
    finally:
        orchestrator.bus.stopping(flow)
        assert orchestrator.bus.answer(flow).type == "oih.flow.stopped"


# --- isolation --------------------------------------------------------------------------------

def test_step_credentials_reach_only_the_steps_own_queue(
        orchestrator: Orchestrator, builtins: dict[str, str], broker: PrivateBroker) -> None:
    mine, theirs = three_step_flow(builtins), three_step_flow(builtins, tenant="tenants/other")
    for flow in (mine, theirs):
        assert start(orchestrator, flow).type == "oih.flow.started"
    try:
        mine_id, theirs_id = mine.name.split("/")[1], theirs.name.split("/")[1]
        spec_file = orchestrator.data_dir / "workers" / mine_id / "double.json"
        assert spec_file.stat().st_mode & 0o777 == 0o600
        spec = StepSpec.from_json(spec_file.read_text())
        assert user_name(mine_id, "double") in spec.amqp_url
        connection = pika.BlockingConnection(pika.URLParameters(spec.amqp_url))
        try:
            refused = [
                lambda ch: ch.basic_get(topology.step_queue(theirs_id, "double")),
                lambda ch: ch.basic_get(topology.step_queue(mine_id, "sink")),
                lambda ch: ch.queue_declare(f"evil-{uuid.uuid4().hex}"),
                lambda ch: ch.basic_publish(topology.exchange_name(theirs_id),
                                            topology.input_key("sink"), b"{}"),
                lambda ch: ch.queue_delete(topology.step_queue(mine_id, "double")),
            ]
            for attempt in refused:
                channel = connection.channel()
                with pytest.raises(pika.exceptions.ChannelClosedByBroker) as error:
                    attempt(channel)
                    channel.basic_qos(prefetch_count=1)  # a round-trip surfaces async errors
                assert error.value.reply_code == 403  # ACCESS_REFUSED
            # Its own queue it may read (the worker consumes it).
            connection.channel().basic_get(topology.step_queue(mine_id, "double"))
        finally:
            connection.close()
    finally:
        for flow in (mine, theirs):
            orchestrator.bus.stopping(flow)
            assert orchestrator.bus.answer(flow).type == "oih.flow.stopped"


# --- failures ---------------------------------------------------------------------------------

def test_start_with_unknown_component_fails_and_leaves_nothing(
        orchestrator: Orchestrator, builtins: dict[str, str], management: Management) -> None:
    flow = three_step_flow(builtins)
    flow.graph.nodes[2].component = "components/does-not-exist"
    flow_id = flow.name.split("/")[1]
    answer = start(orchestrator, flow)
    assert answer.type == "oih.flow.failed"
    failed = answers.FlowFailed()
    answer.data.Unpack(failed)
    assert "components/does-not-exist" in failed.reason and "sink" in failed.reason
    assert failed.tenant == flow.tenant
    assert flow_queues(management, flow_id) == []
    assert management.users(f"oih-flow-{flow_id}.") == []
    assert flow_id not in orchestrator.driver.flows()


def test_worker_that_cannot_start_fails_the_flow(
        orchestrator: Orchestrator, builtins: dict[str, str], management: Management,
        components_channel: grpc.Channel) -> None:
    from oih.components.v1 import components_pb2 as cpb
    from oih.components.v1 import components_pb2_grpc

    broken = components_pb2_grpc.ComponentServiceStub(components_channel).CreateComponent(
        cpb.CreateComponentRequest(component=cpb.Component(
            display_name=f"broken-{uuid.uuid4().hex[:6]}", access=cpb.ACCESS_PUBLIC,
            python_entry_point=cpb.PythonEntryPoint(object_reference="no_such_module:component"),
            actions=[cpb.ComponentFunction(name="sink")])))
    flow = three_step_flow(builtins)
    flow.graph.nodes[2].component = broken.name
    flow_id = flow.name.split("/")[1]
    answer = start(orchestrator, flow)
    assert answer.type == "oih.flow.failed"
    failed = answers.FlowFailed()
    answer.data.Unpack(failed)
    assert "sink" in failed.reason and "did not start" in failed.reason
    assert flow_queues(management, flow_id) == []
    assert management.users(f"oih-flow-{flow_id}.") == []
    assert flow_id not in orchestrator.driver.flows()
    # The log of the failed worker stays for a post-mortem.
    assert "no_such_module" in (orchestrator.data_dir / "workers" / flow_id / "sink.log"
                                ).read_text()


def test_killed_worker_is_restarted_and_the_flow_keeps_working(
        orchestrator: Orchestrator, builtins: dict[str, str], user_md: Any) -> None:
    flow = three_step_flow(builtins)
    flow_id = flow.name.split("/")[1]
    assert start(orchestrator, flow).type == "oih.flow.started"
    try:
        before = {w.step_id: w for w in runtime(orchestrator, flow, user_md).workers}
        os.kill(int(before["double"].instance.removeprefix("pid:")), signal.SIGKILL)

        def restarted() -> pb.Worker | None:
            now = {w.step_id: w for w in runtime(orchestrator, flow, user_md).workers}
            double = now["double"]
            ok = (double.restarts == 1 and double.instance != before["double"].instance
                  and double.state == pb.Worker.STATE_RUNNING)
            return double if ok else None
        wait_for(restarted, 30, "the killed worker to be restarted")
        orchestrator.stub.StartExecution(pb.StartExecutionRequest(flow=flow.name, data=data(n=21)),
                                         metadata=user_md)
        lines = wait_for(lambda: sink_lines(orchestrator.data_dir, flow_id), 30, "the sink")
        assert lines[0]["data"] == {"n": 42, "seen": "transform"}
    finally:
        orchestrator.bus.stopping(flow)
        assert orchestrator.bus.answer(flow).type == "oih.flow.stopped"


def test_expression_is_the_transform_config() -> None:
    assert "n * 2" in EXPRESSION  # the sink assertions above depend on it


def test_failed_from_another_service_removes_the_flow(
        orchestrator: Orchestrator, builtins: dict[str, str], management: Management) -> None:
    """The Flow Repository fails a flow whose transition timed out: we clean up, silently."""
    flow = three_step_flow(builtins)
    flow_id = flow.name.split("/")[1]
    assert start(orchestrator, flow).type == "oih.flow.started"
    orchestrator.bus.publish("oih.flow.failed", answers.FlowFailed(
        flow=flow.name, reason="timed out", tenant=flow.tenant))
    wait_for(lambda: flow_id not in orchestrator.driver.flows() and
             flow_queues(management, flow_id) == [] and
             management.users(f"oih-flow-{flow_id}.") == [], 30, "the flow to be removed")


def test_an_event_naming_a_flow_id_outside_the_workers_folder_removes_nothing(
        orchestrator: Orchestrator, builtins: dict[str, str]) -> None:
    """`flows/..` passes a check for slashes, but the local driver would then clean
    `<data_dir>/workers/..` — the data folder the services share — of every `*.json`."""
    running = three_step_flow(builtins)
    assert start(orchestrator, running).type == "oih.flow.started"  # workers/ exists
    keep = orchestrator.data_dir / "keep.json"
    keep.write_text("{}")
    try:
        flow = three_step_flow(builtins, flow_id="..")
        orchestrator.bus.stopping(flow)
        orchestrator.bus.publish("oih.flow.failed", answers.FlowFailed(
            flow="flows/..", reason="x", tenant=flow.tenant))
    finally:
        # Events are handled in order: when this one is answered, those were handled.
        orchestrator.bus.stopping(running)
        assert orchestrator.bus.answer(running).type == "oih.flow.stopped"
    assert keep.exists()


def _park(broker: PrivateBroker, flow_id: str, count: int) -> None:
    """Put `count` dead letters into the flow's `sink` step (messages that stay queued)."""
    with pika.BlockingConnection(pika.URLParameters(broker.url)) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        for n in range(count):
            channel.basic_publish(topology.exchange_name(flow_id), topology.dead_key("sink"),
                                  f'{{"n": {n}}}'.encode(),
                                  pika.BasicProperties(delivery_mode=2), mandatory=True)


def test_a_failure_keeps_queued_messages_and_a_stop_says_how_many_it_discards(
        orchestrator: Orchestrator, builtins: dict[str, str], management: Management,
        broker: PrivateBroker) -> None:
    flow = three_step_flow(builtins)
    flow_id = flow.name.split("/")[1]
    assert start(orchestrator, flow).type == "oih.flow.started"
    _park(broker, flow_id, 3)
    # Failed elsewhere (a timed-out transition): workers and users go, the messages stay.
    orchestrator.bus.publish("oih.flow.failed", answers.FlowFailed(
        flow=flow.name, reason="timed out", tenant=flow.tenant))
    wait_for(lambda: flow_id not in orchestrator.driver.flows() and
             management.users(f"oih-flow-{flow_id}.") == [], 30, "the workers to be removed")
    assert topology.dead_queue(flow_id, "sink") in flow_queues(management, flow_id)
    # Only an explicit stop deletes them, and it tells how many messages went with them.
    orchestrator.bus.stopping(flow)
    answer = orchestrator.bus.answer(flow)
    assert answer.type == "oih.flow.stopped", answer
    stopped = answers.FlowStateChanged()
    answer.data.Unpack(stopped)
    assert stopped.discarded_messages == 3
    assert flow_queues(management, flow_id) == []
