"""The ScheduleService servicer: converts protos and calls the logic.

Tokens and the RPC's permission are checked by the shared interceptors; the tenant rule is the
logic's (another tenant's schedule answers NOT_FOUND).
"""

from __future__ import annotations

import grpc

from oih.scheduler.v1 import scheduler_pb2 as pb
from oih.scheduler.v1 import scheduler_pb2_grpc
from oih_runtime import principal

from . import convert
from .firing import Firing
from .logic import Schedules

Context = grpc.ServicerContext


class ScheduleServicer(scheduler_pb2_grpc.ScheduleServiceServicer):
    def __init__(self, schedules: Schedules, firing: Firing) -> None:
        self.schedules = schedules
        self.firing = firing

    def GetSchedule(self, request: pb.GetScheduleRequest, context: Context) -> pb.Schedule:
        return convert.schedule(self.schedules.get(principal.current(), request.name))

    def ListSchedules(self, request: pb.ListSchedulesRequest, context: Context
                      ) -> pb.ListSchedulesResponse:
        rows, token = self.schedules.list(principal.current(), request.page_size,
                                          request.page_token, request.filter)
        return pb.ListSchedulesResponse(schedules=[convert.schedule(r) for r in rows],
                                        next_page_token=token)

    def UpdateSchedule(self, request: pb.UpdateScheduleRequest, context: Context
                       ) -> pb.Schedule:
        row = self.schedules.update(principal.current(), request.schedule, request.update_mask)
        return convert.schedule(row)

    def RunScheduleNow(self, request: pb.RunScheduleNowRequest, context: Context
                       ) -> pb.Schedule:
        flow_id = self.schedules.visible(principal.current(), request.name)
        return convert.schedule(self.firing.run_now(flow_id))
