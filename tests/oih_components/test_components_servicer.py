"""The Component Repository over real gRPC: CRUD, lists, who sees and changes what, etags,
and the input rules.

Access decisions under test (documented in oih_components.visibility):
- cannot see a component (another tenant's private one) → NOT_FOUND, for reads and writes;
- can see but may not change it (a public component of another tenant, a tenant component of
  one's own tenant that one does not own) → PERMISSION_DENIED.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from oih.components.v1 import components_pb2 as pb
from oih.components.v1 import components_pb2_grpc
from oih_runtime.interceptors import ON_BEHALF_OF
from tests.oih_components.conftest import TENANT_ADMIN, Caller, entry_point_component
from tests.support.grpc_errors import field_violations, reason

Stub = components_pb2_grpc.ComponentServiceStub
MakeCaller = Callable[..., Caller]


def create(stub: Stub, caller: Caller, **fields: object) -> pb.Component:
    return stub.CreateComponent(
        pb.CreateComponentRequest(component=entry_point_component(**fields)), metadata=caller.md)


def update(stub: Stub, caller: Caller, component: pb.Component,
           paths: tuple[str, ...] = ()) -> pb.Component:
    return stub.UpdateComponent(
        pb.UpdateComponentRequest(component=component,
                                  update_mask=field_mask_pb2.FieldMask(paths=paths)),
        metadata=caller.md)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value.code()  # type: ignore[no-any-return]


def schema(value: dict[str, object]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


# --- CRUD ----------------------------------------------------------------------------------------

def test_create_get_update_delete_round_trip(grpc_stub: Stub, make_caller: MakeCaller) -> None:
    alice = make_caller()
    created = create(
        grpc_stub, alice,
        actions=[pb.ComponentFunction(name="send", description="sends",
                                      config_schema=schema({"type": "object",
                                                            "required": ["url"]}))],
        resources=pb.ResourceRequirements(limits=pb.ResourceQuantities(cpu="500m",
                                                                        memory="256Mi")))
    assert created.name.startswith("components/")
    assert created.tenant == alice.tenant
    assert created.access == pb.ACCESS_PRIVATE  # the default
    assert [(o.id, o.type) for o in created.owners] == [(alice.subject, pb.OWNER_TYPE_USER)]
    assert created.etag and created.create_time.seconds > 0
    assert created.actions[0].config_schema["required"][0] == "url"
    assert created.resources.limits.memory == "256Mi"

    assert grpc_stub.GetComponent(pb.GetComponentRequest(name=created.name),
                                  metadata=alice.md) == created

    changed = pb.Component(name=created.name, description="new words", etag=created.etag,
                           container_image=pb.ContainerImage(image="ghcr.io/acme/crm:2"))
    updated = update(grpc_stub, alice, changed)  # empty mask: the fields that are set
    assert updated.description == "new words"
    assert updated.display_name == created.display_name  # untouched
    assert updated.WhichOneof("distribution") == "container_image"  # replaced the entry point
    assert updated.etag != created.etag
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()

    grpc_stub.DeleteComponent(pb.DeleteComponentRequest(name=created.name, etag=updated.etag),
                              metadata=alice.md)
    assert code_of(lambda: grpc_stub.GetComponent(
        pb.GetComponentRequest(name=created.name), metadata=alice.md)) == grpc.StatusCode.NOT_FOUND


def test_update_with_mask_changes_only_the_named_fields(grpc_stub: Stub,
                                                        make_caller: MakeCaller) -> None:
    alice = make_caller()
    created = create(grpc_stub, alice)
    request = pb.Component(name=created.name, description="ignored", version="2.0.0",
                           actions=[pb.ComponentFunction(name="only")])
    updated = update(grpc_stub, alice, request, ("version", "actions"))
    assert updated.version == "2.0.0"
    assert [a.name for a in updated.actions] == ["only"]
    assert updated.description == created.description
    # A masked field that the request leaves empty is cleared.
    cleared = update(grpc_stub, alice, pb.Component(name=created.name), ("triggers",))
    assert list(cleared.triggers) == []


def test_tenant_component_is_owned_by_its_tenant_too(grpc_stub: Stub,
                                                     make_caller: MakeCaller) -> None:
    alice = make_caller()
    created = create(grpc_stub, alice, access=pb.ACCESS_TENANT)
    assert {(o.id, o.type) for o in created.owners} == {
        (alice.subject, pb.OWNER_TYPE_USER), (alice.tenant, pb.OWNER_TYPE_TENANT)}
    colleague = make_caller(alice.tenant)
    renamed = update(grpc_stub, colleague, pb.Component(name=created.name, display_name="ours"))
    assert renamed.display_name == "ours"


def test_a_principal_without_the_permission_is_denied(grpc_stub: Stub,
                                                      make_caller: MakeCaller) -> None:
    reader = make_caller(permissions=("components.read",))
    assert code_of(lambda: create(grpc_stub, reader)) == grpc.StatusCode.PERMISSION_DENIED


def test_unauthenticated_calls_are_refused(grpc_stub: Stub) -> None:
    assert code_of(lambda: grpc_stub.ListComponents(pb.ListComponentsRequest())) \
        == grpc.StatusCode.UNAUTHENTICATED


# --- lists ---------------------------------------------------------------------------------------

def test_list_pages_filters_and_orders(grpc_stub: Stub, make_caller: MakeCaller) -> None:
    alice = make_caller()
    names = ["delta", "alpha", "echo", "charlie", "bravo"]
    for i, display in enumerate(names):
        create(grpc_stub, alice, display_name=display,
               access=pb.ACCESS_PUBLIC if i % 2 else pb.ACCESS_PRIVATE)
    mine = f'tenant="{alice.tenant}"'

    seen, token = [], ""
    while True:
        page = grpc_stub.ListComponents(
            pb.ListComponentsRequest(filter=mine, order_by="display_name", page_size=2,
                                     page_token=token), metadata=alice.md)
        assert len(page.components) <= 2
        seen += [c.display_name for c in page.components]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(names)

    default_order = grpc_stub.ListComponents(pb.ListComponentsRequest(filter=mine),
                                             metadata=alice.md)
    assert [c.display_name for c in default_order.components] == names  # create_time

    desc = grpc_stub.ListComponents(
        pb.ListComponentsRequest(filter=mine, order_by="display_name desc"), metadata=alice.md)
    assert [c.display_name for c in desc.components] == sorted(names, reverse=True)

    public = grpc_stub.ListComponents(
        pb.ListComponentsRequest(filter=f"{mine} AND access=PUBLIC", order_by="display_name"),
        metadata=alice.md)
    assert [c.display_name for c in public.components] == ["alpha", "charlie"]

    by_name = grpc_stub.ListComponents(
        pb.ListComponentsRequest(filter=f'{mine} AND display_name="echo"'), metadata=alice.md)
    assert [c.display_name for c in by_name.components] == ["echo"]

    owned = grpc_stub.ListComponents(
        pb.ListComponentsRequest(filter=f'owner="{alice.subject}"'), metadata=alice.md)
    assert len(owned.components) == 5


def test_list_shows_what_the_caller_may_see_only(grpc_stub: Stub,
                                                 make_caller: MakeCaller) -> None:
    alice = make_caller()
    private = create(grpc_stub, alice, display_name="private")
    shared = create(grpc_stub, alice, display_name="shared", access=pb.ACCESS_TENANT)
    public = create(grpc_stub, alice, display_name="public", access=pb.ACCESS_PUBLIC)
    mine = pb.ListComponentsRequest(filter=f'tenant="{alice.tenant}"')

    def listed(caller: Caller) -> set[str]:
        reply = grpc_stub.ListComponents(mine, metadata=caller.md)
        return {c.name for c in reply.components}

    assert listed(alice) == {private.name, shared.name, public.name}
    assert listed(make_caller(alice.tenant)) == {shared.name, public.name}
    assert listed(make_caller(alice.tenant, TENANT_ADMIN)) == {private.name, shared.name,
                                                                public.name}
    assert listed(make_caller()) == {public.name}  # another tenant
    assert listed(make_caller("tenants/platform", ("all",))) == {private.name, shared.name,
                                                                  public.name}


@pytest.mark.parametrize(("request_fields", "field"), [
    ({"filter": "colour=red"}, "filter"),
    ({"filter": "access=SOMETIMES"}, "filter"),
    ({"filter": "access>PUBLIC"}, "filter"),
    ({"filter": "display_name"}, "filter"),
    ({"order_by": "owner"}, "order_by"),
    ({"page_token": "garbage"}, "page_token"),
    ({"page_size": -1}, "page_size"),
])
def test_list_rejects_bad_parameters(grpc_stub: Stub, make_caller: MakeCaller,
                                     request_fields: dict[str, object], field: str) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.ListComponents(pb.ListComponentsRequest(**request_fields),  # type: ignore[arg-type]
                                 metadata=make_caller().md)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(failed.value) == [field]


# --- who sees and who changes --------------------------------------------------------------------

def test_public_component_is_readable_by_another_tenant_but_not_writable(
        grpc_stub: Stub, make_caller: MakeCaller) -> None:
    alice, stranger = make_caller(), make_caller()
    public = create(grpc_stub, alice, access=pb.ACCESS_PUBLIC)
    assert grpc_stub.GetComponent(pb.GetComponentRequest(name=public.name),
                                  metadata=stranger.md).name == public.name
    with pytest.raises(grpc.RpcError) as failed:
        update(grpc_stub, stranger, pb.Component(name=public.name, description="mine now"))
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(failed.value) == "NOT_AN_OWNER"
    assert code_of(lambda: grpc_stub.DeleteComponent(
        pb.DeleteComponentRequest(name=public.name), metadata=stranger.md)) \
        == grpc.StatusCode.PERMISSION_DENIED


def test_private_component_of_another_tenant_is_not_found(grpc_stub: Stub,
                                                          make_caller: MakeCaller) -> None:
    alice = make_caller()
    private = create(grpc_stub, alice)
    calls: list[Callable[[Caller], object]] = [
        lambda who: grpc_stub.GetComponent(pb.GetComponentRequest(name=private.name),
                                           metadata=who.md),
        lambda who: update(grpc_stub, who, pb.Component(name=private.name, version="x")),
        lambda who: grpc_stub.DeleteComponent(pb.DeleteComponentRequest(name=private.name),
                                              metadata=who.md),
    ]
    # A tenant administrator of another tenant is a stranger too.
    for stranger in (make_caller(), make_caller(permissions=TENANT_ADMIN)):
        for call in calls:
            with pytest.raises(grpc.RpcError) as failed:
                call(stranger)
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND
            assert reason(failed.value) == "COMPONENT_NOT_FOUND"
    # Indistinguishable from a component that does not exist.
    assert code_of(lambda: grpc_stub.GetComponent(
        pb.GetComponentRequest(name=f"components/{uuid.uuid4().hex}"), metadata=alice.md)) \
        == grpc.StatusCode.NOT_FOUND


def test_private_component_of_a_colleague_is_not_found(grpc_stub: Stub,
                                                       make_caller: MakeCaller) -> None:
    alice = make_caller()
    private = create(grpc_stub, alice)
    colleague = make_caller(alice.tenant)
    assert code_of(lambda: grpc_stub.GetComponent(
        pb.GetComponentRequest(name=private.name), metadata=colleague.md)) \
        == grpc.StatusCode.NOT_FOUND


def test_tenant_component_is_readable_in_the_tenant_and_writable_by_owners_only(
        grpc_stub: Stub, make_caller: MakeCaller) -> None:
    alice = make_caller()
    shared = create(grpc_stub, alice, access=pb.ACCESS_TENANT,
                    owners=[pb.Owner(id=alice.subject, type=pb.OWNER_TYPE_USER)])
    # Drop the tenant owner the create added: now only alice owns it.
    only_alice = update(grpc_stub, alice, pb.Component(
        name=shared.name, owners=[pb.Owner(id=alice.subject, type=pb.OWNER_TYPE_USER)]))
    colleague = make_caller(alice.tenant)
    assert grpc_stub.GetComponent(pb.GetComponentRequest(name=shared.name),
                                  metadata=colleague.md).name == shared.name
    assert code_of(lambda: update(grpc_stub, colleague, pb.Component(
        name=only_alice.name, version="9"))) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: grpc_stub.GetComponent(
        pb.GetComponentRequest(name=shared.name), metadata=make_caller().md)) \
        == grpc.StatusCode.NOT_FOUND


def test_tenant_admin_and_platform_admin_change_components_they_do_not_own(
        grpc_stub: Stub, make_caller: MakeCaller) -> None:
    alice = make_caller()
    private = create(grpc_stub, alice)
    tenant_admin = make_caller(alice.tenant, TENANT_ADMIN)
    changed = update(grpc_stub, tenant_admin, pb.Component(name=private.name, version="2"))
    assert changed.version == "2"
    root = make_caller("tenants/platform", ("all",))
    grpc_stub.DeleteComponent(pb.DeleteComponentRequest(name=private.name), metadata=root.md)


def test_added_owner_of_another_tenant_sees_and_changes_the_component(
        grpc_stub: Stub, make_caller: MakeCaller) -> None:
    alice, partner = make_caller(), make_caller()
    created = create(grpc_stub, alice, owners=[pb.Owner(id=partner.subject,
                                                        type=pb.OWNER_TYPE_USER)])
    assert update(grpc_stub, partner, pb.Component(name=created.name, version="3")).version == "3"


def test_service_acting_on_behalf_of_a_user_is_judged_as_that_user(
        grpc_stub: Stub, make_caller: MakeCaller) -> None:
    alice, stranger = make_caller(), make_caller()
    private = create(grpc_stub, alice)
    service = make_caller("tenants/platform", ("all",), subject="service-accounts/platform",
                          typ="service")

    def get_for(user: Caller) -> pb.Component:
        return grpc_stub.GetComponent(
            pb.GetComponentRequest(name=private.name),
            metadata=(*service.md, (ON_BEHALF_OF, user.token)))

    assert get_for(alice).name == private.name
    assert code_of(lambda: get_for(stranger)) == grpc.StatusCode.NOT_FOUND


def test_service_account_creator_becomes_a_service_account_owner(
        grpc_stub: Stub, make_caller: MakeCaller) -> None:
    robot = make_caller(subject=f"service-accounts/{uuid.uuid4().hex[:8]}", typ="service")
    created = create(grpc_stub, robot)
    assert [(o.id, o.type) for o in created.owners] == [
        (robot.subject, pb.OWNER_TYPE_SERVICE_ACCOUNT)]


# --- etags ---------------------------------------------------------------------------------------

def test_stale_etag_is_aborted_for_update_and_delete(grpc_stub: Stub,
                                                     make_caller: MakeCaller) -> None:
    alice = make_caller()
    created = create(grpc_stub, alice)
    update(grpc_stub, alice, pb.Component(name=created.name, version="2", etag=created.etag))
    for call in (
        lambda: update(grpc_stub, alice, pb.Component(name=created.name, version="3",
                                                      etag=created.etag)),
        lambda: grpc_stub.DeleteComponent(
            pb.DeleteComponentRequest(name=created.name, etag=created.etag), metadata=alice.md),
    ):
        with pytest.raises(grpc.RpcError) as failed:
            call()
        assert failed.value.code() == grpc.StatusCode.ABORTED
        assert reason(failed.value) == "ETAG_MISMATCH"
    # Without an etag the last writer wins.
    grpc_stub.DeleteComponent(pb.DeleteComponentRequest(name=created.name), metadata=alice.md)


# --- input rules ---------------------------------------------------------------------------------

def _fn(name: str = "", config: dict[str, object] | None = None) -> pb.ComponentFunction:
    function = pb.ComponentFunction(name=name)
    if config is not None:
        function.config_schema.update(config)
    return function


def _entry(reference: str) -> pb.PythonEntryPoint:
    return pb.PythonEntryPoint(object_reference=reference)


def _no_distribution() -> pb.Component:
    component = entry_point_component()
    component.ClearField("python_entry_point")
    return component


CREATE_CASES = {
    "missing display name": (entry_point_component(display_name=""),
                             ["component.display_name"]),
    "display name too long": (entry_point_component(display_name="x" * 51),
                              ["component.display_name"]),
    "description too long": (entry_point_component(description="x" * 301),
                             ["component.description"]),
    "unknown access": (entry_point_component(access=9), ["component.access"]),
    "no distribution": (_no_distribution(), ["component.distribution"]),
    "entry point without object": (entry_point_component(python_entry_point=_entry("pkg.mod")),
                                   ["component.python_entry_point.object_reference"]),
    "entry point with blank object": (entry_point_component(python_entry_point=_entry("pkg:")),
                                      ["component.python_entry_point.object_reference"]),
    "entry point is a path": (entry_point_component(python_entry_point=_entry("pkg/mod.py:run")),
                              ["component.python_entry_point.object_reference"]),
    "empty image": (entry_point_component(container_image=pb.ContainerImage()),
                    ["component.container_image.image"]),
    "image with blanks": (entry_point_component(container_image=pb.ContainerImage(
        image="ghcr.io/acme crm")), ["component.container_image.image"]),
    "unknown pull policy": (entry_point_component(container_image=pb.ContainerImage(
        image="acme/crm:1", image_pull_policy=7)),  # type: ignore[arg-type]
        ["component.container_image.image_pull_policy"]),
    "action without name": (entry_point_component(actions=[_fn("a"), _fn("")]),
                             ["component.actions[1].name"]),
    "action name with blanks": (entry_point_component(actions=[_fn("send mail")]),
                                ["component.actions[0].name"]),
    "duplicate action": (entry_point_component(actions=[_fn("a"), _fn("b"), _fn("a")]),
                         ["component.actions[2].name"]),
    "duplicate trigger": (entry_point_component(triggers=[_fn("t"), _fn("t")]),
                          ["component.triggers[1].name"]),
    "schema not of an object": (entry_point_component(actions=[_fn("a", {"type": "string"})]),
                                ["component.actions[0].config_schema"]),
    "schema invalid": (entry_point_component(actions=[_fn("a", {"type": "object",
                                                                "properties": 5})]),
                       ["component.actions[0].config_schema"]),
    "schema with unknown type": (entry_point_component(triggers=[_fn("t", {"type": ["object",
                                                                                     "thing"]})]),
                                 ["component.triggers[0].config_schema"]),
    "owner without type": (entry_point_component(owners=[pb.Owner(id="users/x")]),
                           ["component.owners[0].type"]),
    "owner id of another kind": (entry_point_component(owners=[pb.Owner(
        id="tenants/x", type=pb.OWNER_TYPE_USER)]), ["component.owners[0].id"]),
    "another tenant as owner": (entry_point_component(owners=[pb.Owner(
        id="tenants/someone-else", type=pb.OWNER_TYPE_TENANT)]), ["component.owners[0].id"]),
    "owner listed twice": (entry_point_component(owners=[
        pb.Owner(id="users/x", type=pb.OWNER_TYPE_USER),
        pb.Owner(id="users/x", type=pb.OWNER_TYPE_USER)]), ["component.owners[1].id"]),
    "bad cpu quantity": (entry_point_component(resources=pb.ResourceRequirements(
        limits=pb.ResourceQuantities(cpu="lots"))), ["component.resources.limits.cpu"]),
    "several problems at once": (entry_point_component(description="x" * 301,
                                                       actions=[_fn("")]),
                                 ["component.description", "component.actions[0].name"]),
    # Odd inputs that used to answer INTERNAL (on PostgreSQL, or everywhere) instead.
    "schema with NaN": (entry_point_component(actions=[_fn("a", {"type": "object",
                                                                 "maximum": float("nan")})]),
                        ["component.actions[0].config_schema"]),
    "NUL in display name": (entry_point_component(display_name="nul\x00"),
                            ["component.display_name"]),
    "NUL in description": (entry_point_component(description="nul\x00"),
                           ["component.description"]),
    "NUL in version": (entry_point_component(version="1\x00"), ["component.version"]),
    "NUL in image": (entry_point_component(container_image=pb.ContainerImage(
        image="acme/crm\x00:1")), ["component.container_image.image"]),
    "NUL in owner id": (entry_point_component(owners=[pb.Owner(
        id="users/x\x00", type=pb.OWNER_TYPE_USER)]), ["component.owners[0].id"]),
    "owner id too long to store": (entry_point_component(owners=[pb.Owner(
        id="users/" + "x" * 300, type=pb.OWNER_TYPE_USER)]), ["component.owners[0].id"]),
}


@pytest.mark.parametrize(("component", "fields"), list(CREATE_CASES.values()),
                         ids=list(CREATE_CASES))
def test_create_rejects_bad_input_naming_the_field(grpc_stub: Stub, make_caller: MakeCaller,
                                                   component: pb.Component,
                                                   fields: list[str]) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.CreateComponent(pb.CreateComponentRequest(component=component),
                                  metadata=make_caller().md)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(set(field_violations(failed.value))) == sorted(fields)


def test_a_trigger_and_an_action_may_share_a_name(grpc_stub: Stub,
                                                  make_caller: MakeCaller) -> None:
    created = create(grpc_stub, make_caller(), triggers=[_fn("sync")], actions=[_fn("sync")])
    assert created.triggers[0].name == created.actions[0].name == "sync"


UPDATE_CASES = {
    "clearing the distribution": (pb.Component(), ("python_entry_point",),
                                  ["component.distribution"]),
    "clearing the display name": (pb.Component(), ("display_name",), ["component.display_name"]),
    "duplicate actions": (pb.Component(actions=[_fn("x"), _fn("x")]), (),
                          ["component.actions[1].name"]),
    "malformed entry point": (pb.Component(python_entry_point=_entry("nope")), (),
                              ["component.python_entry_point.object_reference"]),
    "unknown mask path": (pb.Component(), ("colour",), ["update_mask"]),
}


@pytest.mark.parametrize(("change", "paths", "fields"), list(UPDATE_CASES.values()),
                         ids=list(UPDATE_CASES))
def test_update_rejects_bad_input_naming_the_field(
        grpc_stub: Stub, make_caller: MakeCaller, change: pb.Component, paths: tuple[str, ...],
        fields: list[str]) -> None:
    alice = make_caller()
    created = create(grpc_stub, alice)
    request = pb.Component()
    request.CopyFrom(change)
    request.name = created.name
    with pytest.raises(grpc.RpcError) as failed:
        update(grpc_stub, alice, request, paths)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(failed.value) == fields
    stored = grpc_stub.GetComponent(pb.GetComponentRequest(name=created.name), metadata=alice.md)
    assert stored == created  # nothing changed


@pytest.mark.parametrize("bad", ["flows/abc", "components/a\x00b"])  # NUL: PostgreSQL refuses
@pytest.mark.parametrize(("call", "field"), [
    ("get", "name"), ("delete", "name"), ("update", "component.name"),
])
def test_malformed_names_are_invalid(grpc_stub: Stub, make_caller: MakeCaller, call: str,
                                     field: str, bad: str) -> None:
    caller = make_caller()
    calls = {
        "get": lambda: grpc_stub.GetComponent(pb.GetComponentRequest(name=bad),
                                              metadata=caller.md),
        "delete": lambda: grpc_stub.DeleteComponent(pb.DeleteComponentRequest(name=bad),
                                                    metadata=caller.md),
        "update": lambda: update(grpc_stub, caller, pb.Component(name=bad, version="1")),
    }
    with pytest.raises(grpc.RpcError) as failed:
        calls[call]()
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(failed.value) == [field]
