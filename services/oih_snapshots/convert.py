"""SnapshotRow → oih.snapshots.v1.Snapshot."""

from __future__ import annotations

from oih.snapshots.v1 import snapshots_pb2 as pb
from oih_runtime.clock import timestamp

from .models import SnapshotRow


def snapshot(row: SnapshotRow) -> pb.Snapshot:
    message = pb.Snapshot(
        name=f"flows/{row.flow_id}/steps/{row.step_id}/snapshot",
        execution_id=row.execution_id, tenant=row.tenant, etag=row.etag,
        sequence=row.sequence, update_time=timestamp(row.update_time))
    message.data.update(row.data)
    return message
