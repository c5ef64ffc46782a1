"""Events: each change writes its event to the outbox in the same transaction, and IAM's
deletions are handled (the handlers are called directly here, as the consumer would call them
inside its transaction; the consumer itself is tested in tests/oih_runtime/bus)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from sqlalchemy import func
from sqlmodel import Session, col, select

from oih.components.v1 import components_pb2 as pb
from oih.components.v1 import components_pb2_grpc
from oih.events.v1 import components_pb2 as component_events
from oih.events.v1 import event_pb2
from oih.events.v1 import iam_pb2 as iam_events
from oih_components import events
from oih_components.models import ComponentRow, OwnerRow
from oih_components.server import Built
from oih_runtime.bus import OutboxEvent
from oih_runtime.db import transaction
from tests.oih_components.conftest import Caller, entry_point_component

Stub = components_pb2_grpc.ComponentServiceStub
MakeCaller = Callable[..., Caller]


def create(stub: Stub, caller: Caller, **fields: Any) -> pb.Component:
    return stub.CreateComponent(
        pb.CreateComponentRequest(component=entry_point_component(**fields)), metadata=caller.md)


def outbox_for(built: Built, component: str) -> list[tuple[str, str, str]]:
    """(type, payload component, payload tenant) of the outbox rows about `component`."""
    with Session(built.engine) as session:
        rows = session.exec(select(OutboxEvent).where(OutboxEvent.subject == component)
                            .order_by(col(OutboxEvent.seq))).all()
    found = []
    for row in rows:
        envelope = event_pb2.Event.FromString(row.body)
        payload = component_events.ComponentChanged()
        assert envelope.data.Unpack(payload)
        assert (envelope.source, envelope.tenant) == ("oih-components", payload.tenant)
        found.append((row.event_type, payload.component, payload.tenant))
    return found


def count(built: Built, model: Any) -> int:
    with Session(built.engine) as session:
        return int(session.exec(select(func.count()).select_from(model)).one())


def test_create_update_delete_write_their_events(grpc_stub: Stub, make_caller: MakeCaller,
                                                  components_service: Built) -> None:
    alice = make_caller()
    created = create(grpc_stub, alice)
    grpc_stub.UpdateComponent(pb.UpdateComponentRequest(
        component=pb.Component(name=created.name, version="2")), metadata=alice.md)
    grpc_stub.DeleteComponent(pb.DeleteComponentRequest(name=created.name), metadata=alice.md)
    assert outbox_for(components_service, created.name) == [
        (events.CREATED, created.name, alice.tenant),
        (events.UPDATED, created.name, alice.tenant),
        (events.DELETED, created.name, alice.tenant),
    ]


def test_refused_changes_write_no_event(grpc_stub: Stub, make_caller: MakeCaller,
                                        components_service: Built) -> None:
    alice = make_caller()
    created = create(grpc_stub, alice)
    with pytest.raises(grpc.RpcError):
        grpc_stub.UpdateComponent(pb.UpdateComponentRequest(
            component=pb.Component(name=created.name, version="2", etag="stale")),
            metadata=alice.md)
    with pytest.raises(grpc.RpcError):
        grpc_stub.DeleteComponent(pb.DeleteComponentRequest(name=created.name),
                                  metadata=make_caller().md)
    assert [e[0] for e in outbox_for(components_service, created.name)] == [events.CREATED]


def test_a_create_that_fails_after_its_event_was_added_leaves_neither(
        grpc_stub: Stub, make_caller: MakeCaller, components_service: Built,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_add = events.OUTBOX.add

    def add_then_fail(*args: Any, **kwargs: Any) -> Any:
        real_add(*args, **kwargs)
        raise RuntimeError("the transaction fails after the outbox accepted the event")

    before = (count(components_service, ComponentRow), count(components_service, OutboxEvent))
    monkeypatch.setattr(events.OUTBOX, "add", add_then_fail)
    with pytest.raises(grpc.RpcError) as failed:
        create(grpc_stub, make_caller())
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    after = (count(components_service, ComponentRow), count(components_service, OutboxEvent))
    assert after == before


# --- consumed IAM events ------------------------------------------------------------------------

def handle(built: Built, handler: Callable[..., None], payload: Any) -> None:
    with transaction(built.engine) as session:
        handler(session, event_pb2.Event(id="e1", type="test"), payload)


@pytest.fixture
def root(make_caller: MakeCaller) -> Caller:
    """A platform administrator, who sees every component."""
    return make_caller("tenants/platform", ("all",))


def owners_of(stub: Stub, root: Caller, name: str) -> list[str]:
    found = stub.GetComponent(pb.GetComponentRequest(name=name), metadata=root.md)
    return [o.id for o in found.owners]


def test_deleted_user_no_longer_owns_components(grpc_stub: Stub, make_caller: MakeCaller,
                                                components_service: Built, root: Caller) -> None:
    alice, bob = make_caller(), make_caller()
    shared = create(grpc_stub, alice, owners=[pb.Owner(id=bob.subject, type=pb.OWNER_TYPE_USER)])
    other = create(grpc_stub, bob)
    handle(components_service, events.on_user_deleted,
           iam_events.UserChanged(user=bob.subject, tenant=bob.tenant))
    assert owners_of(grpc_stub, root, shared.name) == [alice.subject]
    assert owners_of(grpc_stub, root, other.name) == []  # tenant admins still manage it
    assert outbox_for(components_service, shared.name)[-1][0] == events.UPDATED
    # Handling it again (a redelivery) changes nothing more.
    handle(components_service, events.on_user_deleted,
           iam_events.UserChanged(user=bob.subject, tenant=bob.tenant))
    assert len(outbox_for(components_service, shared.name)) == 2


def test_deleted_service_account_no_longer_owns_components(
        grpc_stub: Stub, make_caller: MakeCaller, components_service: Built, root: Caller
) -> None:
    robot = make_caller(subject="service-accounts/robot-x", typ="service")
    created = create(grpc_stub, robot)
    handle(components_service, events.on_service_account_deleted,
           iam_events.ServiceAccountChanged(service_account=robot.subject, tenant=robot.tenant))
    assert owners_of(grpc_stub, root, created.name) == []


def test_deleted_tenant_loses_its_components_and_its_ownerships(
        grpc_stub: Stub, make_caller: MakeCaller, components_service: Built, root: Caller
) -> None:
    doomed, survivor = make_caller(), make_caller()
    gone = [create(grpc_stub, doomed), create(grpc_stub, doomed, access=pb.ACCESS_TENANT)]
    kept = create(grpc_stub, survivor)
    # Another tenant as an owner can no longer be set through the API; rows from before that
    # rule may still name one, and the tenant's deletion removes it there too.
    with transaction(components_service.engine) as session:
        session.add(OwnerRow(component_id=kept.name.split("/")[1], owner_id=doomed.tenant,
                             owner_type=pb.OWNER_TYPE_TENANT, position=1))
    handle(components_service, events.on_tenant_deleted,
           iam_events.TenantChanged(tenant=doomed.tenant))
    for component in gone:
        with pytest.raises(grpc.RpcError) as failed:
            grpc_stub.GetComponent(pb.GetComponentRequest(name=component.name),
                                   metadata=root.md)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        assert outbox_for(components_service, component.name)[-1] == (
            events.DELETED, component.name, doomed.tenant)
    with Session(components_service.engine) as session:
        assert session.exec(select(OwnerRow).where(
            col(OwnerRow.component_id).in_([c.name.split("/")[1] for c in gone]))).all() == []
    assert owners_of(grpc_stub, root, kept.name) == [survivor.subject]


def test_handlers_are_registered_for_the_iam_deletions(components_service: Built) -> None:
    routes = {r.pattern: r.handler for r in components_service.consumer._routes}
    assert routes == {
        "oih.iam.user.deleted": events.on_user_deleted,
        "oih.iam.service_account.deleted": events.on_service_account_deleted,
        "oih.iam.tenant.deleted": events.on_tenant_deleted,
    }
