"""The flow lifecycle: `:start`, `:stop`, `:execute` over real gRPC and the outbox rows they
write; the event handlers (called directly, as the bus consumer would, with a session and a
payload); and the sweeper that fails flows stuck in a transition."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import grpc
import pytest
from google.protobuf import struct_pb2
from sqlalchemy.engine import Engine

from oih.events.v1 import event_pb2, iam_pb2, orchestrator_pb2
from oih.events.v1 import flows_pb2 as flow_events
from oih.flows.v1 import flows_pb2 as pb
from oih.flows.v1 import flows_pb2_grpc
from oih_flows import events
from oih_flows.models import FlowRow
from oih_flows.server import Built
from oih_flows.sweeper import Sweeper, fail_stuck_flows
from oih_runtime.clock import utcnow
from oih_runtime.db import transaction
from tests.oih_flows.conftest import Caller, Tenant, outbox, two_node_flow
from tests.support.grpc_errors import field_violations, reason

Stub = flows_pb2_grpc.FlowServiceStub
TIMEOUT = timedelta(seconds=120)


def create(stub: Stub, tenant: Tenant, **fields: object) -> pb.Flow:
    return stub.CreateFlow(pb.CreateFlowRequest(flow=two_node_flow(tenant.component, **fields)),
                           metadata=tenant.user.md)


def get(stub: Stub, caller: Caller, name: str) -> pb.Flow:
    return stub.GetFlow(pb.GetFlowRequest(name=name), metadata=caller.md)


def start(stub: Stub, caller: Caller, name: str) -> pb.Flow:
    return stub.StartFlow(pb.StartFlowRequest(name=name), metadata=caller.md)


def stop(stub: Stub, caller: Caller, name: str) -> pb.Flow:
    return stub.StopFlow(pb.StopFlowRequest(name=name), metadata=caller.md)


def payload_of(row: object, message: type) -> object:
    event = event_pb2.Event.FromString(row.body)  # type: ignore[attr-defined]
    payload = message()
    assert event.data.Unpack(payload)
    return payload


def handle(engine: Engine, event_type: str, payload: object) -> None:
    """Run a handler the way the bus consumer does: inside one transaction."""
    handler, payload_type = events.HANDLERS[event_type]
    assert isinstance(payload, payload_type)
    with transaction(engine) as session:
        handler(session, event_pb2.Event(id="e", type=event_type), payload)


def started(engine: Engine, flow: pb.Flow) -> None:
    handle(engine, "oih.flow.started",
           orchestrator_pb2.FlowStateChanged(flow=flow.name, tenant=flow.tenant))


def set_state(engine: Engine, flow: pb.Flow, state: int, seconds_ago: float = 0) -> None:
    with transaction(engine) as session:
        row = session.get(FlowRow, flow.name.removeprefix("flows/"))
        assert row is not None
        row.state = state
        row.state_time = utcnow() - timedelta(seconds=seconds_ago)
        session.add(row)


# --------------------------------------------------------------------------- start and stop

def test_start_sets_starting_and_emits_the_whole_flow(grpc_stub: Stub, tenant: Tenant,
                                                      flows_service: Built) -> None:
    created = create(grpc_stub, tenant)
    flow = start(grpc_stub, tenant.user, created.name)
    assert flow.state == pb.STATE_STARTING
    assert flow.started_by == tenant.user.subject
    assert flow.running_version == flow.version == 1
    rows = outbox(flows_service.engine, created.name)
    assert [r.event_type for r in rows] == ["oih.flow.created", "oih.flow.starting"]
    assert rows[-1].source == "oih-flows" and rows[-1].tenant == tenant.user.tenant
    starting = payload_of(rows[-1], flow_events.FlowStarting)
    assert starting == flow_events.FlowStarting(flow=flow, started_by=tenant.user.subject)


def test_starting_a_starting_or_active_flow_changes_nothing(
        grpc_stub: Stub, tenant: Tenant, flows_service: Built) -> None:
    created = create(grpc_stub, tenant)
    first = start(grpc_stub, tenant.user, created.name)
    assert start(grpc_stub, tenant.user, created.name).etag == first.etag
    started(flows_service.engine, first)
    active = get(grpc_stub, tenant.user, created.name)
    assert start(grpc_stub, tenant.user, created.name).etag == active.etag
    assert [r.event_type for r in outbox(flows_service.engine, created.name)].count(
        "oih.flow.starting") == 1


def test_starting_a_stopping_flow_is_a_failed_precondition(
        grpc_stub: Stub, tenant: Tenant) -> None:
    created = create(grpc_stub, tenant)
    start(grpc_stub, tenant.user, created.name)
    stop(grpc_stub, tenant.user, created.name)
    with pytest.raises(grpc.RpcError) as failed:
        start(grpc_stub, tenant.user, created.name)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(failed.value) == "FLOW_STOPPING"


def test_full_cycle_start_started_stop_stopped(grpc_stub: Stub, tenant: Tenant,
                                               flows_service: Built) -> None:
    engine = flows_service.engine
    created = create(grpc_stub, tenant)
    start(grpc_stub, tenant.user, created.name)
    started(engine, created)
    assert get(grpc_stub, tenant.user, created.name).state == pb.STATE_ACTIVE
    stopping = stop(grpc_stub, tenant.user, created.name)
    assert stopping.state == pb.STATE_STOPPING
    handle(engine, "oih.flow.stopped",
           orchestrator_pb2.FlowStateChanged(flow=created.name, tenant=created.tenant))
    inactive = get(grpc_stub, tenant.user, created.name)
    assert inactive.state == pb.STATE_INACTIVE and inactive.running_version == 0
    rows = outbox(engine, created.name)
    assert [r.event_type for r in rows] == [
        "oih.flow.created", "oih.flow.starting", "oih.flow.stopping"]
    assert payload_of(rows[-1], flow_events.FlowStopping) == flow_events.FlowStopping(
        flow=stopping, stopped_by=tenant.user.subject)


@pytest.mark.parametrize("state", [pb.STATE_STARTING, pb.STATE_ACTIVE, pb.STATE_STOPPING,
                                   pb.STATE_FAILED])
def test_stop_works_from_any_state(grpc_stub: Stub, tenant: Tenant, flows_service: Built,
                                   state: int) -> None:
    created = create(grpc_stub, tenant)
    set_state(flows_service.engine, created, state, seconds_ago=60)
    stopped = stop(grpc_stub, tenant.user, created.name)
    assert stopped.state == pb.STATE_STOPPING
    assert outbox(flows_service.engine, created.name)[-1].event_type == "oih.flow.stopping"
    # The transition clock restarts: a nudged stop gets its full timeout again.
    assert created.name not in fail_stuck_flows(
        flows_service.engine, utcnow() + timedelta(seconds=100), TIMEOUT)


def test_stopping_an_inactive_flow_changes_nothing(grpc_stub: Stub, tenant: Tenant,
                                                   flows_service: Built) -> None:
    created = create(grpc_stub, tenant)
    assert stop(grpc_stub, tenant.user, created.name).etag == created.etag
    assert [r.event_type for r in outbox(flows_service.engine, created.name)] == [
        "oih.flow.created"]


def test_a_failed_flow_can_be_changed_and_started_again(grpc_stub: Stub, tenant: Tenant,
                                                        flows_service: Built) -> None:
    created = create(grpc_stub, tenant)
    start(grpc_stub, tenant.user, created.name)
    handle(flows_service.engine, "oih.flow.failed",
           orchestrator_pb2.FlowFailed(flow=created.name, reason="image not found"))
    updated = grpc_stub.UpdateFlow(pb.UpdateFlowRequest(
        flow=pb.Flow(name=created.name, description="fixed")), metadata=tenant.user.md)
    assert updated.state == pb.STATE_FAILED and updated.version == 2
    again = start(grpc_stub, tenant.user, created.name)
    assert again.state == pb.STATE_STARTING and again.state_reason == ""
    assert again.running_version == 2


# --------------------------------------------------------------------------- execute

def test_execute_emits_flow_execute_for_an_active_flow(grpc_stub: Stub, tenant: Tenant,
                                                       flows_service: Built) -> None:
    created = create(grpc_stub, tenant)
    start(grpc_stub, tenant.user, created.name)
    started(flows_service.engine, created)
    data = struct_pb2.Struct()
    data.update({"customer": 42})
    reply = grpc_stub.ExecuteFlow(pb.ExecuteFlowRequest(name=created.name, data=data),
                                  metadata=tenant.user.md)
    assert reply.execution.startswith(f"{created.name}/executions/")
    row = outbox(flows_service.engine, created.name)[-1]
    assert row.event_type == "oih.flow.execute"
    execute = payload_of(row, flow_events.FlowExecute)
    assert execute == flow_events.FlowExecute(
        flow=created.name, execution_id=reply.execution.rsplit("/", 1)[1], data=data,
        source="api")


def test_execute_with_data_json_cannot_carry_is_invalid(grpc_stub: Stub, tenant: Tenant,
                                                      flows_service: Built) -> None:
    # The orchestrator turns `data` into the first message's JSON: NaN would fail there,
    # after we had answered with an execution that never runs.
    created = create(grpc_stub, tenant)
    start(grpc_stub, tenant.user, created.name)
    started(flows_service.engine, created)
    data = struct_pb2.Struct()
    data.update({"customer": {"score": float("nan")}})
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.ExecuteFlow(pb.ExecuteFlowRequest(name=created.name, data=data),
                              metadata=tenant.user.md)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(failed.value) == ["data.customer.score"]
    assert outbox(flows_service.engine, created.name)[-1].event_type != "oih.flow.execute"


@pytest.mark.parametrize("state", [pb.STATE_INACTIVE, pb.STATE_STARTING, pb.STATE_STOPPING,
                                   pb.STATE_FAILED])
def test_execute_needs_an_active_flow(grpc_stub: Stub, tenant: Tenant, flows_service: Built,
                                      state: int) -> None:
    created = create(grpc_stub, tenant)
    set_state(flows_service.engine, created, state)
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.ExecuteFlow(pb.ExecuteFlowRequest(name=created.name), metadata=tenant.user.md)
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(failed.value) == "FLOW_NOT_ACTIVE"


# --------------------------------------------------------------------------- event handlers

@pytest.mark.parametrize(("event_type", "before", "after"), [
    ("oih.flow.started", pb.STATE_STARTING, pb.STATE_ACTIVE),
    ("oih.flow.started", pb.STATE_STOPPING, pb.STATE_STOPPING),  # stale: a stop is under way
    ("oih.flow.started", pb.STATE_INACTIVE, pb.STATE_INACTIVE),
    ("oih.flow.stopped", pb.STATE_STOPPING, pb.STATE_INACTIVE),
    ("oih.flow.stopped", pb.STATE_STARTING, pb.STATE_STARTING),  # stale: started again
    ("oih.flow.stopped", pb.STATE_FAILED, pb.STATE_FAILED),  # keeps the reason visible
])
def test_orchestrator_events_move_the_state_only_where_they_apply(
        grpc_stub: Stub, tenant: Tenant, flows_service: Built, event_type: str, before: int,
        after: int) -> None:
    created = create(grpc_stub, tenant)
    set_state(flows_service.engine, created, before)
    handle(flows_service.engine, event_type,
           orchestrator_pb2.FlowStateChanged(flow=created.name, tenant=created.tenant))
    assert get(grpc_stub, tenant.user, created.name).state == after


@pytest.mark.parametrize("before", [pb.STATE_STARTING, pb.STATE_ACTIVE, pb.STATE_STOPPING])
def test_flow_failed_keeps_the_reason(grpc_stub: Stub, tenant: Tenant, flows_service: Built,
                                      before: int) -> None:
    created = create(grpc_stub, tenant)
    set_state(flows_service.engine, created, before)
    handle(flows_service.engine, "oih.flow.failed", orchestrator_pb2.FlowFailed(
        flow=created.name, reason="worker log keeps crashing", tenant=created.tenant))
    flow = get(grpc_stub, tenant.user, created.name)
    assert flow.state == pb.STATE_FAILED
    assert flow.state_reason == "worker log keeps crashing"


def test_flow_failed_for_an_inactive_flow_is_ignored(grpc_stub: Stub, tenant: Tenant,
                                                     flows_service: Built) -> None:
    created = create(grpc_stub, tenant)
    handle(flows_service.engine, "oih.flow.failed",
           orchestrator_pb2.FlowFailed(flow=created.name, reason="late news"))
    assert get(grpc_stub, tenant.user, created.name).state == pb.STATE_INACTIVE


def test_events_for_unknown_or_foreign_flows_are_ignored(grpc_stub: Stub, tenant: Tenant,
                                                         flows_service: Built) -> None:
    created = create(grpc_stub, tenant)
    set_state(flows_service.engine, created, pb.STATE_STARTING)
    handle(flows_service.engine, "oih.flow.started",
           orchestrator_pb2.FlowStateChanged(flow="flows/gone"))
    handle(flows_service.engine, "oih.flow.started",
           orchestrator_pb2.FlowStateChanged(flow=created.name, tenant="tenants/other"))
    assert get(grpc_stub, tenant.user, created.name).state == pb.STATE_STARTING


@pytest.mark.parametrize("kind", ["user", "service"])
def test_deleted_owner_is_removed_and_ownerless_flows_stop(
        grpc_stub: Stub, tenant: Tenant, flows_service: Built,
        make_caller: Callable[..., Caller], kind: str) -> None:
    """Deleting a user or a service account: it owns nothing any more, and the flows it alone
    owned stop."""
    engine = flows_service.engine
    user = tenant.user
    if kind == "service":
        user = make_caller(user.tenant, subject=f"service-accounts/{uuid.uuid4().hex}",
                           typ="service")
        tenant = Tenant(user, tenant.component)
    colleague = make_caller(user.tenant)
    alone = create(grpc_stub, tenant)
    shared = create(grpc_stub, tenant, owners=[
        pb.Owner(id=colleague.subject, type=pb.OWNER_TYPE_USER)])
    assert alone.owners[0].id == user.subject
    for flow in (alone, shared):
        start(grpc_stub, user, flow.name)
        started(engine, flow)
    if kind == "user":
        handle(engine, "oih.iam.user.deleted",
               iam_pb2.UserChanged(user=user.subject, tenant=user.tenant))
    else:
        handle(engine, "oih.iam.service_account.deleted",
               iam_pb2.ServiceAccountChanged(service_account=user.subject, tenant=user.tenant))

    orphan = get(grpc_stub, colleague, alone.name)  # still in the tenant, for colleagues
    assert list(orphan.owners) == []
    assert orphan.state == pb.STATE_STOPPING
    stopping = outbox(engine, alone.name)[-1]
    assert stopping.event_type == "oih.flow.stopping"
    assert payload_of(stopping, flow_events.FlowStopping).stopped_by == ""  # the platform

    kept = get(grpc_stub, colleague, shared.name)
    assert [o.id for o in kept.owners] == [colleague.subject]
    assert kept.state == pb.STATE_ACTIVE
    assert outbox(engine, shared.name)[-1].event_type == "oih.flow.updated"


def test_tenant_deleted_removes_its_flows_and_stops_running_ones(
        grpc_stub: Stub, tenant: Tenant, flows_service: Built) -> None:
    engine = flows_service.engine
    idle = create(grpc_stub, tenant)
    running = create(grpc_stub, tenant)
    start(grpc_stub, tenant.user, running.name)
    handle(engine, "oih.iam.tenant.deleted", iam_pb2.TenantChanged(tenant=tenant.user.tenant))
    for flow in (idle, running):
        with pytest.raises(grpc.RpcError) as gone:
            get(grpc_stub, tenant.user, flow.name)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert [r.event_type for r in outbox(engine, idle.name)][-1] == "oih.flow.deleted"
    assert [r.event_type for r in outbox(engine, running.name)][-2:] == [
        "oih.flow.stopping", "oih.flow.deleted"]


# --------------------------------------------------------------------------- the sweeper

@pytest.mark.parametrize(("state", "words"), [(pb.STATE_STARTING, "stuck in STARTING"),
                                              (pb.STATE_STOPPING, "stuck in STOPPING")])
def test_sweeper_fails_a_flow_stuck_in_a_transition_with_the_reason(
        grpc_stub: Stub, tenant: Tenant, flows_service: Built, state: int, words: str) -> None:
    engine = flows_service.engine
    created = create(grpc_stub, tenant)
    set_state(engine, created, state, seconds_ago=121)
    fresh = create(grpc_stub, tenant)
    set_state(engine, fresh, state, seconds_ago=60)

    failed = fail_stuck_flows(engine, utcnow(), TIMEOUT)

    assert created.name in failed and fresh.name not in failed
    flow = get(grpc_stub, tenant.user, created.name)
    assert flow.state == pb.STATE_FAILED
    assert words in flow.state_reason and "120 s" in flow.state_reason
    assert get(grpc_stub, tenant.user, fresh.name).state == state
    row = outbox(engine, created.name)[-1]
    assert row.event_type == "oih.flow.failed"
    assert payload_of(row, orchestrator_pb2.FlowFailed) == orchestrator_pb2.FlowFailed(
        flow=created.name, reason=flow.state_reason, tenant=tenant.user.tenant)
    # Our own oih.flow.failed coming back over the bus changes nothing.
    handle(engine, "oih.flow.failed", payload_of(row, orchestrator_pb2.FlowFailed))
    assert get(grpc_stub, tenant.user, created.name).etag == flow.etag


def test_our_own_late_failed_event_does_not_fail_the_next_start(
        grpc_stub: Stub, tenant: Tenant, flows_service: Built) -> None:
    # The broker was down: the sweeper failed the flow, the user started it again, and only
    # then did the relay publish the sweeper's oih.flow.failed, which comes back to us.
    engine = flows_service.engine
    created = create(grpc_stub, tenant)
    set_state(engine, created, pb.STATE_STARTING, seconds_ago=121)
    assert fail_stuck_flows(engine, utcnow(), TIMEOUT) == [created.name]
    [ours] = [r for r in outbox(engine, created.name) if r.event_type == "oih.flow.failed"]
    assert start(grpc_stub, tenant.user, created.name).state == pb.STATE_STARTING

    event = event_pb2.Event.FromString(ours.body)  # as the bus delivers it
    with transaction(engine) as session:
        events.flow_failed(session, event, payload_of(ours, orchestrator_pb2.FlowFailed))

    assert get(grpc_stub, tenant.user, created.name).state == pb.STATE_STARTING


def test_sweeper_thread_runs_and_stops(grpc_stub: Stub, tenant: Tenant,
                                       flows_service: Built) -> None:
    engine = flows_service.engine
    created = create(grpc_stub, tenant)
    set_state(engine, created, pb.STATE_STARTING, seconds_ago=5)
    sweeper = Sweeper(engine, timedelta(seconds=1), interval=0.05)
    sweeper.start()
    try:
        for _ in range(100):
            if get(grpc_stub, tenant.user, created.name).state == pb.STATE_FAILED:
                break
            time.sleep(0.05)
    finally:
        sweeper.stop()
    assert not sweeper.running
    assert get(grpc_stub, tenant.user, created.name).state == pb.STATE_FAILED
