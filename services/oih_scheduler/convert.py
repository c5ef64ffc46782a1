"""ScheduleRow → oih.scheduler.v1.Schedule."""

from __future__ import annotations

from datetime import timedelta

from oih.scheduler.v1 import scheduler_pb2 as pb
from oih_runtime.clock import timestamp

from .models import PAUSED, SKIP, ScheduleRow


def schedule(row: ScheduleRow) -> pb.Schedule:
    message = pb.Schedule(
        name=f"schedules/{row.flow_id}", flow=f"flows/{row.flow_id}", cron=row.cron,
        time_zone=row.time_zone,
        state=pb.STATE_PAUSED if row.state == PAUSED else pb.STATE_ACTIVE,
        skip_if_running=row.overlap_policy == SKIP,
        overlap_policy=pb.OverlapPolicy.Value(f"OVERLAP_POLICY_{row.overlap_policy}"),
        misfire_policy=pb.MisfirePolicy.Value(f"MISFIRE_POLICY_{row.misfire_policy}"),
        last_execution=row.last_execution, tenant=row.tenant, etag=row.etag,
        buffered_run=row.buffered,
    )
    message.catch_up_window.FromTimedelta(timedelta(seconds=row.catch_up_seconds))
    if row.next_run_time is not None:
        message.next_run_time.CopyFrom(timestamp(row.next_run_time))
    if row.last_run_time is not None:
        message.last_run_time.CopyFrom(timestamp(row.last_run_time))
    return message
