"""The SnapshotService servicer: converts protos and calls the logic (tokens and permissions
are the shared interceptors'; the tenant rule is the logic's)."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from oih.snapshots.v1 import snapshots_pb2 as pb
from oih.snapshots.v1 import snapshots_pb2_grpc
from oih_runtime import principal

from . import convert
from .logic import Snapshots

Context = grpc.ServicerContext


class SnapshotServicer(snapshots_pb2_grpc.SnapshotServiceServicer):
    def __init__(self, snapshots: Snapshots) -> None:
        self.snapshots = snapshots

    def GetSnapshot(self, request: pb.GetSnapshotRequest, context: Context) -> pb.Snapshot:
        return convert.snapshot(self.snapshots.get(principal.current(), request.name,
                                                   request.execution_id))

    def ListSnapshots(self, request: pb.ListSnapshotsRequest, context: Context
                      ) -> pb.ListSnapshotsResponse:
        rows, token = self.snapshots.list(principal.current(), request.parent,
                                          request.page_size, request.page_token, request.filter)
        return pb.ListSnapshotsResponse(snapshots=[convert.snapshot(r) for r in rows],
                                        next_page_token=token)

    def UpdateSnapshot(self, request: pb.UpdateSnapshotRequest, context: Context
                       ) -> pb.Snapshot:
        return convert.snapshot(self.snapshots.update(
            principal.current(), request.snapshot, request.update_mask, request.allow_missing))

    def DeleteSnapshot(self, request: pb.DeleteSnapshotRequest, context: Context
                       ) -> empty_pb2.Empty:
        self.snapshots.delete(principal.current(), request.name, request.execution_id,
                              request.etag)
        return empty_pb2.Empty()
