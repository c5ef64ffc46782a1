"""The SnapshotService over a real gRPC server: reading, listing, an operator's reset winning
over older writes, deleting, and tenant isolation (another tenant's snapshot is NOT_FOUND)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from oih.snapshots.v1 import snapshots_pb2 as pb
from oih.snapshots.v1 import snapshots_pb2_grpc
from oih_dataplane import topology
from oih_orchestrator.snapshots import SnapshotReader
from oih_runtime import server as runtime_server
from oih_runtime import settings as runtime_settings
from oih_runtime.clients import authenticated_channel
from oih_snapshots import ingest
from oih_snapshots.server import Built, build
from tests.oih_snapshots.test_ordering import known_flow, write
from tests.support.grpc_errors import field_violations
from tests.support.tokens import TestIssuer, bearer

PERMISSIONS = ("snapshots.read", "snapshots.write")


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def service(database_url: str, issuer: TestIssuer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Built, str]]:
    config = replace(runtime_settings.load("snapshots", {}), database_url=database_url,
                     data_dir=Path(tmp_path_factory.mktemp("data")))
    built = build(config, verifier=issuer.verifier)  # no background threads
    running = runtime_server.start(built.service, host="127.0.0.1", port=0, max_workers=4,
                                   grace=0.5)
    yield built, running.address
    running.stop()
    built.engine.dispose()


@pytest.fixture(scope="module")
def stub(service: tuple[Built, str]) -> Iterator[snapshots_pb2_grpc.SnapshotServiceStub]:
    with grpc.insecure_channel(service[1]) as channel:
        yield snapshots_pb2_grpc.SnapshotServiceStub(channel)


def md(issuer: TestIssuer, tenant: str) -> tuple[tuple[str, str]]:
    return bearer(issuer.token(tenant=tenant, permissions=PERMISSIONS))


def flow_with_snapshot(service: tuple[Built, str], tenant: str, position: int = 7) -> str:
    flow_id = uuid.uuid4().hex[:10]
    known_flow(service[0].engine, flow_id, tenant)
    ingest.apply(service[0].engine, topology.exchange_name(flow_id),
                 write(flow_id, 100, {"position": position}))
    ingest.apply(service[0].engine, topology.exchange_name(flow_id),
                 write(flow_id, 101, {"page": 1}, step="fetch", execution="e1"))
    return flow_id


def test_get_and_list(service: tuple[Built, str], stub: snapshots_pb2_grpc.SnapshotServiceStub,
                      issuer: TestIssuer) -> None:
    flow_id = flow_with_snapshot(service, "tenants/a")
    caller = md(issuer, "tenants/a")
    got = stub.GetSnapshot(pb.GetSnapshotRequest(name=f"flows/{flow_id}/steps/poll/snapshot"),
                           metadata=caller)
    assert dict(got.data) == {"position": 7} and got.sequence == 100
    assert got.tenant == "tenants/a" and got.execution_id == ""
    scoped = stub.GetSnapshot(pb.GetSnapshotRequest(
        name=f"flows/{flow_id}/steps/fetch/snapshot", execution_id="e1"), metadata=caller)
    assert dict(scoped.data) == {"page": 1}
    with pytest.raises(grpc.RpcError) as missing:  # the persistent one of `fetch` does not exist
        stub.GetSnapshot(pb.GetSnapshotRequest(name=f"flows/{flow_id}/steps/fetch/snapshot"),
                         metadata=caller)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    listed = stub.ListSnapshots(pb.ListSnapshotsRequest(parent=f"flows/{flow_id}"),
                                metadata=caller)
    assert [(s.name.split("/")[3], s.execution_id) for s in listed.snapshots] == [
        ("fetch", "e1"), ("poll", "")]
    persistent = stub.ListSnapshots(pb.ListSnapshotsRequest(
        parent=f"flows/{flow_id}", filter='execution_id=""'), metadata=caller)
    assert [s.name.split("/")[3] for s in persistent.snapshots] == ["poll"]


def test_operator_reset_wins_over_older_writes(service: tuple[Built, str],
                                               stub: snapshots_pb2_grpc.SnapshotServiceStub,
                                               issuer: TestIssuer) -> None:
    flow_id = flow_with_snapshot(service, "tenants/a")
    caller = md(issuer, "tenants/a")
    name = f"flows/{flow_id}/steps/poll/snapshot"
    data = struct_pb2.Struct()
    data.update({"position": 0})
    reset = stub.UpdateSnapshot(pb.UpdateSnapshotRequest(
        snapshot=pb.Snapshot(name=name, data=data),
        update_mask=field_mask_pb2.FieldMask(paths=["data"])), metadata=caller)
    assert dict(reset.data) == {"position": 0} and reset.sequence > 101
    # A write emitted before the reset and delivered after it is dropped.
    assert not ingest.apply(service[0].engine, topology.exchange_name(flow_id),
                            write(flow_id, 102, {"position": 8}))
    again = stub.GetSnapshot(pb.GetSnapshotRequest(name=name), metadata=caller)
    assert dict(again.data) == {"position": 0}
    with pytest.raises(grpc.RpcError) as stale:
        stub.DeleteSnapshot(pb.DeleteSnapshotRequest(name=name, etag="stale"), metadata=caller)
    assert stale.value.code() == grpc.StatusCode.ABORTED
    stub.DeleteSnapshot(pb.DeleteSnapshotRequest(name=name, etag=again.etag), metadata=caller)
    with pytest.raises(grpc.RpcError) as gone:
        stub.GetSnapshot(pb.GetSnapshotRequest(name=name), metadata=caller)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_other_tenants_snapshots_are_not_found(service: tuple[Built, str],
                                               stub: snapshots_pb2_grpc.SnapshotServiceStub,
                                               issuer: TestIssuer) -> None:
    flow_id = flow_with_snapshot(service, "tenants/victim")
    name = f"flows/{flow_id}/steps/poll/snapshot"
    evil = md(issuer, "tenants/evil")
    data = struct_pb2.Struct()
    data.update({"position": 999})
    calls = [
        lambda: stub.GetSnapshot(pb.GetSnapshotRequest(name=name), metadata=evil),
        lambda: stub.UpdateSnapshot(pb.UpdateSnapshotRequest(
            snapshot=pb.Snapshot(name=name, data=data), allow_missing=True), metadata=evil),
        lambda: stub.UpdateSnapshot(pb.UpdateSnapshotRequest(
            snapshot=pb.Snapshot(name=f"flows/{flow_id}/steps/new/snapshot", data=data),
            allow_missing=True), metadata=evil),
        lambda: stub.DeleteSnapshot(pb.DeleteSnapshotRequest(name=name), metadata=evil),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as listed:  # the flow itself is not theirs to see
        stub.ListSnapshots(pb.ListSnapshotsRequest(parent=f"flows/{flow_id}"), metadata=evil)
    assert listed.value.code() == grpc.StatusCode.NOT_FOUND
    mine = stub.GetSnapshot(pb.GetSnapshotRequest(name=name), metadata=md(issuer,
                                                                          "tenants/victim"))
    assert dict(mine.data) == {"position": 7}


def test_bad_updates_name_the_field(service: tuple[Built, str],
                                    stub: snapshots_pb2_grpc.SnapshotServiceStub,
                                    issuer: TestIssuer) -> None:
    flow_id = flow_with_snapshot(service, "tenants/a")
    caller = md(issuer, "tenants/a")
    data = struct_pb2.Struct()
    data.update({"position": 1})
    cases = [
        (pb.UpdateSnapshotRequest(snapshot=pb.Snapshot(name=f"flows/{flow_id}/steps/poll",
                                                       data=data)), "snapshot.name"),
        (pb.UpdateSnapshotRequest(
            snapshot=pb.Snapshot(name=f"flows/{flow_id}/steps/poll/snapshot", data=data),
            update_mask=field_mask_pb2.FieldMask(paths=["tenant"])), "update_mask"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.RpcError) as caught:
            stub.UpdateSnapshot(request, metadata=caller)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)


def test_list_with_a_bad_filter_or_parent(stub: snapshots_pb2_grpc.SnapshotServiceStub,
                                          issuer: TestIssuer) -> None:
    for request, field in [(pb.ListSnapshotsRequest(parent="flows/f", filter="step_id~x"),
                            "filter"),
                           (pb.ListSnapshotsRequest(parent="tenants/x"), "parent")]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListSnapshots(request, metadata=md(issuer, "tenants/a"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)


def test_the_orchestrators_reader_finds_no_snapshot_of_a_flow_the_service_has_not_heard_of(
        service: tuple[Built, str], issuer: TestIssuer) -> None:
    # A start right after the flow was created may come before the Snapshots service consumed
    # the flow's event: the flow has no snapshot yet, and its deployment must not fail.
    platform = issuer.token(subject="service-accounts/platform", tenant="tenants/platform",
                            permissions=("all",), typ="service")
    reader = SnapshotReader(authenticated_channel(service[1], lambda: platform))
    assert reader.persistent(uuid.uuid4().hex[:10]) == {}
    flow_id = flow_with_snapshot(service, "tenants/a")
    assert reader.persistent(flow_id) == {"poll": ({"position": 7}, 100)}
