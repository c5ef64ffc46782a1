"""The ScheduleService over a real gRPC server with the shared interceptors: reading, listing,
updating, running now, and tenant isolation (another tenant's schedule is NOT_FOUND)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from oih.scheduler.v1 import scheduler_pb2 as pb
from oih.scheduler.v1 import scheduler_pb2_grpc
from oih_runtime import server as runtime_server
from oih_runtime import settings as runtime_settings
from oih_scheduler.server import Built, build
from oih_scheduler.settings import SchedulerSettings
from tests.oih_scheduler.support import RecordingLauncher, finish_execution, start_flow
from tests.support.grpc_errors import field_violations, reason
from tests.support.tokens import TestIssuer, bearer

PERMISSIONS = ("schedules.read", "schedules.write")


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def launcher() -> RecordingLauncher:
    return RecordingLauncher()


@pytest.fixture(scope="module")
def scheduler(database_url: str, issuer: TestIssuer, launcher: RecordingLauncher,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Built, str]]:
    config = replace(runtime_settings.load("scheduler", {}), database_url=database_url,
                     data_dir=Path(tmp_path_factory.mktemp("data")))
    built = build(config, SchedulerSettings.from_env({}), verifier=issuer.verifier,
                  launcher=launcher, bus=False)  # the ticker is not started: no ticks fire
    running = runtime_server.start(built.service, host="127.0.0.1", port=0, max_workers=4,
                                   grace=0.5)
    yield built, running.address
    running.stop()
    built.engine.dispose()


@pytest.fixture(scope="module")
def stub(scheduler: tuple[Built, str]) -> Iterator[scheduler_pb2_grpc.ScheduleServiceStub]:
    with grpc.insecure_channel(scheduler[1]) as channel:
        yield scheduler_pb2_grpc.ScheduleServiceStub(channel)


def flow(scheduler: tuple[Built, str], tenant: str, cron: str = "*/5 * * * *") -> str:
    flow_id = uuid.uuid4().hex[:12]
    start_flow(scheduler[0].engine, flow_id, cron, tenant)
    return flow_id


def md(issuer: TestIssuer, tenant: str, permissions: tuple[str, ...] = PERMISSIONS
       ) -> tuple[tuple[str, str]]:
    return bearer(issuer.token(tenant=tenant, permissions=permissions))


def test_started_cron_flow_has_an_armed_schedule(scheduler: tuple[Built, str],
                                                 stub: scheduler_pb2_grpc.ScheduleServiceStub,
                                                 issuer: TestIssuer) -> None:
    flow_id = flow(scheduler, "tenants/a")
    got = stub.GetSchedule(pb.GetScheduleRequest(name=f"schedules/{flow_id}"),
                           metadata=md(issuer, "tenants/a"))
    assert got.flow == f"flows/{flow_id}" and got.cron == "*/5 * * * *"
    assert got.state == pb.STATE_ACTIVE and got.time_zone == "UTC"
    assert got.HasField("next_run_time") and got.next_run_time.seconds % 300 == 0
    assert got.misfire_policy == pb.MISFIRE_POLICY_FIRE_ONCE
    assert got.tenant == "tenants/a"


def test_other_tenants_schedule_is_not_found_everywhere(
        scheduler: tuple[Built, str], stub: scheduler_pb2_grpc.ScheduleServiceStub,
        issuer: TestIssuer, launcher: RecordingLauncher) -> None:
    flow_id = flow(scheduler, "tenants/victim")
    name = f"schedules/{flow_id}"
    evil = md(issuer, "tenants/evil")
    calls = [
        lambda: stub.GetSchedule(pb.GetScheduleRequest(name=name), metadata=evil),
        lambda: stub.UpdateSchedule(pb.UpdateScheduleRequest(
            schedule=pb.Schedule(name=name, state=pb.STATE_PAUSED)), metadata=evil),
        lambda: stub.RunScheduleNow(pb.RunScheduleNowRequest(name=name), metadata=evil),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = stub.ListSchedules(pb.ListSchedulesRequest(), metadata=evil)
    assert name not in [s.name for s in listed.schedules]
    assert not any(key[0] == flow_id for key in launcher.started)
    still = stub.GetSchedule(pb.GetScheduleRequest(name=name),
                             metadata=md(issuer, "tenants/victim"))
    assert still.state == pb.STATE_ACTIVE


def test_list_filters_by_state_and_flow(scheduler: tuple[Built, str],
                                        stub: scheduler_pb2_grpc.ScheduleServiceStub,
                                        issuer: TestIssuer) -> None:
    tenant = f"tenants/{uuid.uuid4().hex[:6]}"
    a, b = flow(scheduler, tenant), flow(scheduler, tenant, "0 3 * * *")
    caller = md(issuer, tenant)
    stub.UpdateSchedule(pb.UpdateScheduleRequest(
        schedule=pb.Schedule(name=f"schedules/{b}", state=pb.STATE_PAUSED)), metadata=caller)
    everything = stub.ListSchedules(pb.ListSchedulesRequest(), metadata=caller)
    assert [s.name for s in everything.schedules] == [f"schedules/{a}", f"schedules/{b}"]
    paused = stub.ListSchedules(pb.ListSchedulesRequest(filter="state=PAUSED"), metadata=caller)
    assert [s.name for s in paused.schedules] == [f"schedules/{b}"]
    assert not paused.schedules[0].HasField("next_run_time")
    one = stub.ListSchedules(pb.ListSchedulesRequest(filter=f'flow="flows/{a}"'),
                             metadata=caller)
    assert [s.name for s in one.schedules] == [f"schedules/{a}"]


def test_pause_resume_and_time_zone(scheduler: tuple[Built, str],
                                    stub: scheduler_pb2_grpc.ScheduleServiceStub,
                                    issuer: TestIssuer) -> None:
    tenant = "tenants/tz"
    name = f"schedules/{flow(scheduler, tenant, '0 9 * * *')}"
    caller = md(issuer, tenant)
    paused = stub.UpdateSchedule(pb.UpdateScheduleRequest(
        schedule=pb.Schedule(name=name, state=pb.STATE_PAUSED)), metadata=caller)
    assert paused.state == pb.STATE_PAUSED and not paused.HasField("next_run_time")
    resumed = stub.UpdateSchedule(pb.UpdateScheduleRequest(
        schedule=pb.Schedule(name=name, state=pb.STATE_ACTIVE, time_zone="Asia/Kolkata",
                             overlap_policy=pb.OVERLAP_POLICY_BUFFER_ONE,
                             misfire_policy=pb.MISFIRE_POLICY_FIRE_ALL,
                             catch_up_window=duration_pb2.Duration(seconds=600)),
        update_mask=field_mask_pb2.FieldMask(paths=[
            "state", "time_zone", "overlap_policy", "misfire_policy", "catch_up_window"])),
        metadata=caller)
    # 09:00 in Kolkata is 03:30 UTC.
    assert resumed.next_run_time.ToDatetime().strftime("%H:%M") == "03:30"
    assert resumed.overlap_policy == pb.OVERLAP_POLICY_BUFFER_ONE
    assert resumed.misfire_policy == pb.MISFIRE_POLICY_FIRE_ALL
    assert resumed.catch_up_window.seconds == 600 and not resumed.skip_if_running
    with pytest.raises(grpc.RpcError) as stale:
        stub.UpdateSchedule(pb.UpdateScheduleRequest(schedule=pb.Schedule(
            name=name, skip_if_running=True, etag=paused.etag)), metadata=caller)
    assert stale.value.code() == grpc.StatusCode.ABORTED


@pytest.mark.parametrize(("schedule", "paths", "field"), [
    (pb.Schedule(time_zone="Mars/Olympus"), [], "schedule.time_zone"),
    (pb.Schedule(), ["cron"], "update_mask"),
    (pb.Schedule(catch_up_window=duration_pb2.Duration(seconds=10**7)), [],
     "schedule.catch_up_window"),
    (pb.Schedule(misfire_policy=42), [], "schedule.misfire_policy"),  # type: ignore[arg-type]
])
def test_bad_updates_name_the_field(scheduler: tuple[Built, str],
                                    stub: scheduler_pb2_grpc.ScheduleServiceStub,
                                    issuer: TestIssuer, schedule: pb.Schedule, paths: list[str],
                                    field: str) -> None:
    schedule.name = f"schedules/{flow(scheduler, 'tenants/a')}"
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpdateSchedule(pb.UpdateScheduleRequest(
            schedule=schedule, update_mask=field_mask_pb2.FieldMask(paths=paths)),
            metadata=md(issuer, "tenants/a"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(caught.value)


def test_a_bad_name_is_invalid_and_another_tenants_bad_update_not_found(
        scheduler: tuple[Built, str], stub: scheduler_pb2_grpc.ScheduleServiceStub,
        issuer: TestIssuer) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpdateSchedule(pb.UpdateScheduleRequest(schedule=pb.Schedule(name="flows/x")),
                            metadata=md(issuer, "tenants/a"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "schedule.name" in field_violations(caught.value)
    # Another tenant's schedule answers NOT_FOUND whatever the request (as a missing one).
    name = f"schedules/{flow(scheduler, 'tenants/victim')}"
    with pytest.raises(grpc.RpcError) as hidden:
        stub.UpdateSchedule(pb.UpdateScheduleRequest(
            schedule=pb.Schedule(name=name, time_zone="Mars/Olympus")),
            metadata=md(issuer, "tenants/evil"))
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND


def test_run_now_fires_once_and_honours_skip_if_running(
        scheduler: tuple[Built, str], stub: scheduler_pb2_grpc.ScheduleServiceStub,
        issuer: TestIssuer, launcher: RecordingLauncher) -> None:
    tenant = "tenants/now"
    flow_id = flow(scheduler, tenant, "0 0 1 1 *")
    name = f"schedules/{flow_id}"
    caller = md(issuer, tenant)
    before = stub.GetSchedule(pb.GetScheduleRequest(name=name), metadata=caller)
    ran = stub.RunScheduleNow(pb.RunScheduleNowRequest(name=name), metadata=caller)
    assert ran.last_execution.startswith(f"flows/{flow_id}/executions/now-")
    assert ran.next_run_time == before.next_run_time  # the regular next run is unchanged
    assert [k for k in launcher.started if k[0] == flow_id] == [
        (flow_id, ran.last_execution.rsplit("/", 1)[-1])]
    stub.UpdateSchedule(pb.UpdateScheduleRequest(
        schedule=pb.Schedule(name=name, skip_if_running=True)), metadata=caller)
    with pytest.raises(grpc.RpcError) as caught:
        stub.RunScheduleNow(pb.RunScheduleNowRequest(name=name), metadata=caller)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(caught.value) == "EXECUTION_RUNNING"
    finish_execution(scheduler[0].engine, ran.last_execution, tenant)
    again = stub.RunScheduleNow(pb.RunScheduleNowRequest(name=name), metadata=caller)
    assert again.last_execution != ran.last_execution


def test_reading_needs_the_permission(scheduler: tuple[Built, str],
                                      stub: scheduler_pb2_grpc.ScheduleServiceStub,
                                      issuer: TestIssuer) -> None:
    name = f"schedules/{flow(scheduler, 'tenants/a')}"
    with pytest.raises(grpc.RpcError) as caught:
        stub.RunScheduleNow(pb.RunScheduleNowRequest(name=name),
                            metadata=md(issuer, "tenants/a", ("schedules.read",)))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as anonymous:
        stub.GetSchedule(pb.GetScheduleRequest(name=name))
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
