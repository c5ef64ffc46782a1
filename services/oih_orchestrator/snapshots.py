"""The steps' last persistent snapshots, read from the Snapshots service when a flow is
deployed and handed to each worker in its StepSpec.

Why the orchestrator reads them and not the worker: a worker runs component code, which must
not hold a platform token (with the platform service account's rights it could read any
tenant's data). The orchestrator already holds one; it asks once per deployment, with
ListSnapshots of the flow, and a worker gets its step's state (and its sequence number, from
which the worker's own writes continue) in the spec. Every start of the flow reads afresh, so a
stopped and restarted or redeployed trigger continues where it stopped. The local driver asks
again before it restarts a crashed worker (`Orchestrator.with_latest_snapshot`). A pod the
kubernetes driver's Deployment restarts keeps its deployment's spec: it continues from the
snapshot the deployment started with (its later writes then win by their newer sequence
numbers), until the flow is started again.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format

from oih.snapshots.v1 import snapshots_pb2 as pb
from oih.snapshots.v1 import snapshots_pb2_grpc


class SnapshotsUnavailable(RuntimeError):
    """The Snapshots service did not answer."""


class SnapshotReader:
    def __init__(self, channel: grpc.Channel, timeout: float = 10.0) -> None:
        self.stub = snapshots_pb2_grpc.SnapshotServiceStub(channel)
        self.timeout = timeout

    def persistent(self, flow_id: str) -> dict[str, tuple[dict[str, Any], int]]:
        """step id → (data, sequence) of the flow's persistent snapshots."""
        found: dict[str, tuple[dict[str, Any], int]] = {}
        token = ""
        try:
            while True:
                reply = self.stub.ListSnapshots(pb.ListSnapshotsRequest(
                    parent=f"flows/{flow_id}", filter='execution_id=""', page_size=1000,
                    page_token=token), timeout=self.timeout)
                for snapshot in reply.snapshots:
                    step_id = snapshot.name.split("/")[3]
                    found[step_id] = (json_format.MessageToDict(snapshot.data),
                                      snapshot.sequence)
                token = reply.next_page_token
                if not token:
                    return found
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                # The Snapshots service learns flows from their events; one it has not heard of
                # yet (a start right after the flow was created) has no snapshot either.
                return found
            raise SnapshotsUnavailable(
                f"the Snapshots service did not answer: {error.code()}") from None
