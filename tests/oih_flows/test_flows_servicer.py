"""FlowService standard methods over real gRPC: create, read, list, update, delete, etags,
tenant isolation, and the rule that only flows at rest change."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import field_mask_pb2

from oih.events.v1 import event_pb2
from oih.events.v1 import flows_pb2 as flow_events
from oih.flows.v1 import flows_pb2 as pb
from oih.flows.v1 import flows_pb2_grpc
from oih_flows.server import Built
from tests.oih_flows.conftest import Caller, Tenant, outbox, two_node_flow
from tests.support.grpc_errors import field_violations, reason

Stub = flows_pb2_grpc.FlowServiceStub


def create(stub: Stub, tenant: Tenant, **fields: object) -> pb.Flow:
    return stub.CreateFlow(pb.CreateFlowRequest(flow=two_node_flow(tenant.component, **fields)),
                           metadata=tenant.user.md)


def test_example_a_tenant_user_creates_lists_and_updates_a_flow_with_etags(
        grpc_stub: Stub, tenant: Tenant, flows_service: Built) -> None:
    user = tenant.user
    created = create(grpc_stub, tenant, display_name="Sync contacts", cron="*/5 * * * *")
    assert created.name.startswith("flows/")
    assert created.tenant == user.tenant
    assert created.state == pb.STATE_INACTIVE
    assert created.version == 1 and created.etag and created.revision_id
    assert [(o.id, o.type) for o in created.owners] == [(user.subject, pb.OWNER_TYPE_USER)]
    assert [e.id for e in created.graph.edges] == ["e1"]  # assigned by the server

    listed = grpc_stub.ListFlows(pb.ListFlowsRequest(), metadata=user.md)
    assert [f.name for f in listed.flows] == [created.name]

    changed = pb.Flow(name=created.name, etag=created.etag, description="every five minutes")
    updated = grpc_stub.UpdateFlow(
        pb.UpdateFlowRequest(flow=changed,
                             update_mask=field_mask_pb2.FieldMask(paths=["description"])),
        metadata=user.md)
    assert updated.description == "every five minutes"
    assert updated.display_name == "Sync contacts"  # not in the mask: kept
    assert updated.version == 2 and updated.revision_id != created.revision_id
    assert updated.etag != created.etag

    stale = pb.Flow(name=created.name, etag=created.etag, description="lost update")
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.UpdateFlow(pb.UpdateFlowRequest(flow=stale), metadata=user.md)
    assert failed.value.code() == grpc.StatusCode.ABORTED
    assert reason(failed.value) == "ETAG_MISMATCH"

    events = [(r.event_type, r.tenant) for r in outbox(flows_service.engine, created.name)]
    assert events == [("oih.flow.created", user.tenant), ("oih.flow.updated", user.tenant)]
    payload = flow_events.FlowChanged()
    assert event_pb2.Event.FromString(
        outbox(flows_service.engine, created.name)[0].body).data.Unpack(payload)
    assert payload == flow_events.FlowChanged(flow=created.name, tenant=user.tenant)


def test_update_with_an_empty_mask_changes_the_fields_that_are_set(
        grpc_stub: Stub, tenant: Tenant) -> None:
    created = create(grpc_stub, tenant)
    graph = pb.Graph(nodes=[pb.Node(id="only", component=tenant.component, function="timer")])
    updated = grpc_stub.UpdateFlow(
        pb.UpdateFlowRequest(flow=pb.Flow(name=created.name, graph=graph)),
        metadata=tenant.user.md)
    assert [n.id for n in updated.graph.nodes] == ["only"]  # the graph is replaced whole
    assert updated.display_name == created.display_name


def test_owner_only_update_keeps_the_version(grpc_stub: Stub, tenant: Tenant) -> None:
    created = create(grpc_stub, tenant)
    owners = [*created.owners, pb.Owner(id=tenant.user.tenant, type=pb.OWNER_TYPE_TENANT)]
    updated = grpc_stub.UpdateFlow(
        pb.UpdateFlowRequest(flow=pb.Flow(name=created.name, owners=owners)),
        metadata=tenant.user.md)
    assert [o.id for o in updated.owners] == [tenant.user.subject, tenant.user.tenant]
    assert updated.version == created.version
    assert updated.etag != created.etag


def test_update_naming_only_output_only_fields_changes_nothing(
        grpc_stub: Stub, tenant: Tenant, flows_service: Built) -> None:
    created = create(grpc_stub, tenant)
    same = grpc_stub.UpdateFlow(pb.UpdateFlowRequest(
        flow=pb.Flow(name=created.name, state=pb.STATE_ACTIVE, version=7),
        update_mask=field_mask_pb2.FieldMask(paths=["state", "version"])),
        metadata=tenant.user.md)
    assert same == created
    assert len(outbox(flows_service.engine, created.name)) == 1  # only oih.flow.created


def test_update_mask_naming_an_unknown_field_is_invalid(grpc_stub: Stub, tenant: Tenant) -> None:
    created = create(grpc_stub, tenant)
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.UpdateFlow(pb.UpdateFlowRequest(
            flow=pb.Flow(name=created.name),
            update_mask=field_mask_pb2.FieldMask(paths=["graph.nodes"])), metadata=tenant.user.md)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(failed.value) == ["update_mask"]


def test_delete_with_a_stale_etag_is_aborted_and_with_the_current_one_deletes(
        grpc_stub: Stub, tenant: Tenant, flows_service: Built) -> None:
    created = create(grpc_stub, tenant)
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.DeleteFlow(pb.DeleteFlowRequest(name=created.name, etag="stale"),
                             metadata=tenant.user.md)
    assert failed.value.code() == grpc.StatusCode.ABORTED
    grpc_stub.DeleteFlow(pb.DeleteFlowRequest(name=created.name, etag=created.etag),
                         metadata=tenant.user.md)
    with pytest.raises(grpc.RpcError) as gone:
        grpc_stub.GetFlow(pb.GetFlowRequest(name=created.name), metadata=tenant.user.md)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert outbox(flows_service.engine, created.name)[-1].event_type == "oih.flow.deleted"


@pytest.mark.parametrize("state_after", ["start", "start_and_stop"])
def test_a_running_flow_cannot_be_updated_or_deleted(grpc_stub: Stub, tenant: Tenant,
                                                     state_after: str) -> None:
    created = create(grpc_stub, tenant)
    grpc_stub.StartFlow(pb.StartFlowRequest(name=created.name), metadata=tenant.user.md)
    if state_after == "start_and_stop":  # STOPPING: the runtime is still there
        grpc_stub.StopFlow(pb.StopFlowRequest(name=created.name), metadata=tenant.user.md)
    with pytest.raises(grpc.RpcError) as update:
        grpc_stub.UpdateFlow(pb.UpdateFlowRequest(
            flow=pb.Flow(name=created.name, description="x")), metadata=tenant.user.md)
    with pytest.raises(grpc.RpcError) as delete:
        grpc_stub.DeleteFlow(pb.DeleteFlowRequest(name=created.name), metadata=tenant.user.md)
    for failed in (update, delete):
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(failed.value) == "FLOW_NOT_AT_REST"
        assert "stop it first" in (failed.value.details() or "")


def test_other_tenants_flows_are_not_found_for_read_write_and_control(
        grpc_stub: Stub, tenant: Tenant, make_caller: Callable[..., Caller]) -> None:
    created = create(grpc_stub, tenant)
    stranger = make_caller()  # another tenant, every flows permission
    calls = [
        lambda: grpc_stub.GetFlow(pb.GetFlowRequest(name=created.name), metadata=stranger.md),
        lambda: grpc_stub.UpdateFlow(pb.UpdateFlowRequest(
            flow=pb.Flow(name=created.name, description="mine now")), metadata=stranger.md),
        lambda: grpc_stub.DeleteFlow(pb.DeleteFlowRequest(name=created.name),
                                     metadata=stranger.md),
        lambda: grpc_stub.StartFlow(pb.StartFlowRequest(name=created.name), metadata=stranger.md),
        lambda: grpc_stub.StopFlow(pb.StopFlowRequest(name=created.name), metadata=stranger.md),
        lambda: grpc_stub.ExecuteFlow(pb.ExecuteFlowRequest(name=created.name),
                                      metadata=stranger.md),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as failed:
            call()
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason(failed.value) == "FLOW_NOT_FOUND"
    assert grpc_stub.ListFlows(pb.ListFlowsRequest(), metadata=stranger.md).flows == []
    # Untouched by all of that.
    again = grpc_stub.GetFlow(pb.GetFlowRequest(name=created.name), metadata=tenant.user.md)
    assert again.etag == created.etag


def test_colleagues_of_the_tenant_may_act_on_its_flows(
        grpc_stub: Stub, tenant: Tenant, make_caller: Callable[..., Caller]) -> None:
    created = create(grpc_stub, tenant)
    colleague = make_caller(tenant.user.tenant)  # same tenant, not an owner
    got = grpc_stub.GetFlow(pb.GetFlowRequest(name=created.name), metadata=colleague.md)
    assert got.name == created.name
    started = grpc_stub.StartFlow(pb.StartFlowRequest(name=created.name), metadata=colleague.md)
    assert started.started_by == colleague.subject


def test_platform_admin_sees_every_tenants_flows(
        grpc_stub: Stub, tenant: Tenant, make_caller: Callable[..., Caller]) -> None:
    created = create(grpc_stub, tenant)
    admin = make_caller("tenants/platform", ("all",))
    assert grpc_stub.GetFlow(pb.GetFlowRequest(name=created.name), metadata=admin.md).name == (
        created.name)


def test_reader_without_write_permission_cannot_create(
        grpc_stub: Stub, tenant: Tenant, make_caller: Callable[..., Caller]) -> None:
    reader = make_caller(tenant.user.tenant, ("flows.read",))
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.CreateFlow(pb.CreateFlowRequest(flow=two_node_flow(tenant.component)),
                             metadata=reader.md)
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_malformed_flow_name_names_the_field(grpc_stub: Stub, tenant: Tenant) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.GetFlow(pb.GetFlowRequest(name="components/x"), metadata=tenant.user.md)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(failed.value) == ["name"]


# --------------------------------------------------------------------------- listing

def test_list_filters_orders_and_pages(grpc_stub: Stub, tenant: Tenant,
                                       make_caller: Callable[..., Caller]) -> None:
    md = tenant.user.md
    b = create(grpc_stub, tenant, display_name="b", cron="0 * * * *")
    a = create(grpc_stub, tenant, display_name="a")
    c = create(grpc_stub, tenant, display_name="c")
    grpc_stub.StartFlow(pb.StartFlowRequest(name=c.name), metadata=md)

    def names(**request: object) -> list[str]:
        return [f.display_name for f in
                grpc_stub.ListFlows(pb.ListFlowsRequest(**request), metadata=md).flows]

    assert names() == ["b", "a", "c"]  # default: create_time
    assert names(order_by="display_name desc") == ["c", "b", "a"]
    assert names(filter="state=STARTING") == ["c"]
    assert names(filter="state=INACTIVE AND has_cron=false") == ["a"]
    assert names(filter="has_cron=true") == ["b"]
    assert names(filter='display_name="a"') == ["a"]
    assert names(filter=f'owner="{tenant.user.subject}"') == ["b", "a", "c"]
    assert names(filter=f'component="{tenant.component}"', order_by="display_name") == [
        "a", "b", "c"]
    assert names(filter='owner="users/nobody"') == []

    first = grpc_stub.ListFlows(pb.ListFlowsRequest(page_size=2, order_by="display_name"),
                                metadata=md)
    second = grpc_stub.ListFlows(pb.ListFlowsRequest(page_size=2, order_by="display_name",
                                                     page_token=first.next_page_token),
                                 metadata=md)
    assert [f.name for f in first.flows] == [a.name, b.name]
    assert [f.name for f in second.flows] == [c.name] and second.next_page_token == ""


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"filter": "state=RUNNING"}, "filter"),
    ({"filter": "colour=red"}, "filter"),
    ({"filter": "has_cron=maybe"}, "filter"),
    ({"order_by": "state"}, "order_by"),
    ({"page_token": "garbage!"}, "page_token"),
    ({"page_size": -1}, "page_size"),
])
def test_bad_list_requests_name_the_field(grpc_stub: Stub, tenant: Tenant,
                                          request_fields: dict[str, object], field: str) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.ListFlows(pb.ListFlowsRequest(**request_fields), metadata=tenant.user.md)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(failed.value) == [field]
