"""Schedules as the API sees them: visibility, listing, updates, and arming from flow events.

Visibility follows the flow's tenant (as the orchestrator's views do): a principal sees the
schedules of its own tenant's flows; platform administrators see all. Another tenant's
schedule answers NOT_FOUND, never PERMISSION_DENIED, so its existence does not leak.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import field_mask_pb2
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih.scheduler.v1 import scheduler_pb2 as pb
from oih_runtime import cron, filtering, paging
from oih_runtime.clock import utcnow
from oih_runtime.db import transaction
from oih_runtime.errors import Aborted, InvalidArgument, NotFound
from oih_runtime.principal import Principal

from .models import ACTIVE, ALLOW, PAUSED, SKIP, ScheduleRow

NAME = re.compile(r"^schedules/([A-Za-z0-9_-]{1,63})$")
FLOW = re.compile(r"^flows/([A-Za-z0-9_-]{1,63})$")
UPDATABLE = ("state", "time_zone", "skip_if_running", "overlap_policy", "misfire_policy",
             "catch_up_window")
MAX_CATCH_UP = timedelta(days=7)


def schedule_id(name: str, field: str = "name") -> str:
    match = NAME.match(name)
    if match is None:
        raise InvalidArgument.field(field, "must look like schedules/{schedule}")
    return match.group(1)


def touch(row: ScheduleRow) -> None:
    row.etag = uuid.uuid4().hex
    row.update_time = utcnow()


def arm(row: ScheduleRow, now: datetime) -> None:
    """Compute the next run from now, or none while paused or while the flow does not run."""
    if row.state == ACTIVE and row.flow_active:
        row.next_run_time = cron.parse(row.cron, row.time_zone).next_after(now)
    else:
        row.next_run_time = None
        row.buffered = False


def _visible(session: Session, caller: Principal, flow_id: str, field: str = "name"
             ) -> ScheduleRow:
    row = session.get(ScheduleRow, flow_id)
    if row is None or not caller.sees_tenant(row.tenant):
        raise NotFound("schedule", f"schedules/{flow_id}")
    return row


def _state_condition(op: str, value: str) -> Any:
    if op != "=" or value not in (ACTIVE, PAUSED):
        raise ValueError("use state=ACTIVE or state=PAUSED")
    return col(ScheduleRow.state) == value


def _flow_condition(op: str, value: str) -> Any:
    match = FLOW.match(value)
    if op != "=" or match is None:
        raise ValueError('use flow="flows/{flow}"')
    return col(ScheduleRow.flow_id) == match.group(1)


FILTERS = {"state": _state_condition, "flow": _flow_condition}


class Schedules:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, caller: Principal, name: str) -> ScheduleRow:
        flow_id = schedule_id(name)
        with Session(self.engine) as session:
            return _visible(session, caller, flow_id)

    def visible(self, caller: Principal, name: str) -> str:
        """The flow id of a schedule the caller may see (NOT_FOUND otherwise)."""
        return self.get(caller, name).flow_id

    def list(self, caller: Principal, page_size: int, page_token: str, filter_text: str
             ) -> tuple[Sequence[ScheduleRow], str]:
        query = select(ScheduleRow)
        for condition in filtering.conditions(filter_text, FILTERS):
            query = query.where(condition)
        if not caller.is_platform_admin:
            query = query.where(col(ScheduleRow.tenant) == caller.tenant)
        # By next run time; schedules without one (paused, flow stopped) last.
        query = query.order_by(col(ScheduleRow.next_run_time).is_(None),
                               col(ScheduleRow.next_run_time), col(ScheduleRow.flow_id))
        with Session(self.engine) as session:
            return paging.page(session, query, page_size, page_token, fingerprint=filter_text)

    def update(self, caller: Principal, schedule: pb.Schedule,
               mask: field_mask_pb2.FieldMask) -> ScheduleRow:
        flow_id = schedule_id(schedule.name, "schedule.name")
        with transaction(self.engine, lock=True) as session:
            row = session.exec(select(ScheduleRow).where(col(ScheduleRow.flow_id) == flow_id)
                               .with_for_update()).first()
            if row is None or not caller.sees_tenant(row.tenant):
                # Before judging the fields: another tenant's schedule answers exactly as a
                # missing one, whatever the request.
                raise NotFound("schedule", f"schedules/{flow_id}")
            paths = list(mask.paths) or [f for f in UPDATABLE if _is_set(schedule, f)]
            for path in paths:
                if path not in UPDATABLE:
                    raise InvalidArgument.field(
                        "update_mask", f"{path!r} cannot be changed; use " + ", ".join(UPDATABLE))
            changes = _changes(schedule, paths)
            if schedule.etag and schedule.etag != row.etag:
                raise Aborted(f"schedules/{flow_id} changed meanwhile (etag mismatch)",
                              reason="ETAG_MISMATCH")
            rearm = False
            for key, value in changes.items():
                if getattr(row, key) != value:
                    rearm = rearm or key in ("state", "time_zone")
                    setattr(row, key, value)
            if rearm:
                arm(row, utcnow())  # resuming fires no missed ticks
            touch(row)
            session.add(row)
            return row


def _is_set(schedule: pb.Schedule, field: str) -> bool:
    if field == "catch_up_window":
        return schedule.HasField("catch_up_window")
    return bool(getattr(schedule, field))


def _changes(schedule: pb.Schedule, paths: list[str]) -> dict[str, Any]:
    """Validated column values for the masked fields."""
    changes: dict[str, Any] = {}
    if "state" in paths:
        changes["state"] = PAUSED if schedule.state == pb.STATE_PAUSED else ACTIVE
    if "time_zone" in paths:
        try:
            cron.zone(schedule.time_zone)
        except cron.CronError as error:
            raise InvalidArgument.field("schedule.time_zone", str(error)) from None
        changes["time_zone"] = schedule.time_zone or "UTC"
    if "skip_if_running" in paths:
        changes["overlap_policy"] = SKIP if schedule.skip_if_running else ALLOW
    if "overlap_policy" in paths and schedule.overlap_policy != pb.OVERLAP_POLICY_UNSPECIFIED:
        if schedule.overlap_policy not in pb.OverlapPolicy.values():
            raise InvalidArgument.field("schedule.overlap_policy", "unknown value")
        changes["overlap_policy"] = pb.OverlapPolicy.Name(schedule.overlap_policy).removeprefix(
            "OVERLAP_POLICY_")
    if "misfire_policy" in paths:
        if schedule.misfire_policy not in pb.MisfirePolicy.values():
            raise InvalidArgument.field("schedule.misfire_policy", "unknown value")
        value = schedule.misfire_policy or pb.MISFIRE_POLICY_FIRE_ONCE
        changes["misfire_policy"] = pb.MisfirePolicy.Name(value).removeprefix("MISFIRE_POLICY_")
    if "catch_up_window" in paths:
        window = schedule.catch_up_window.ToTimedelta()
        if not timedelta(seconds=1) <= window <= MAX_CATCH_UP:
            raise InvalidArgument.field("schedule.catch_up_window",
                                        "between 1 second and 7 days")
        changes["catch_up_seconds"] = int(window.total_seconds())
    return changes
