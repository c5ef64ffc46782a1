"""Small pieces without a broker: settings, names, built-in registration."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine
from sqlmodel import Session

from oih.components.v1 import components_pb2 as cpb
from oih.components.v1 import components_pb2_grpc
from oih.flows.v1 import flows_pb2
from oih_orchestrator.broker_users import with_credentials, without_credentials
from oih_orchestrator.components import builtin_component, register_builtins
from oih_orchestrator.context import StartFailed
from oih_orchestrator.execute import Started, StartRecorder, forget_starts
from oih_orchestrator.executions import models as executions_models
from oih_orchestrator.management import vhost_of
from oih_orchestrator.models import TABLES, ExecutionStartRow
from oih_orchestrator.settings import OrchestratorSettings, management_url_for
from oih_orchestrator.vetting import entry_step
from oih_runtime.db import make_engine, transaction
from tests.support import postgres


def test_management_url_defaults_to_the_broker_host_with_its_credentials() -> None:
    assert management_url_for("amqp://bob:secret@rabbit.example:5672/%2F") == \
        "http://bob:secret@rabbit.example:15672/"
    own = OrchestratorSettings.from_env({}, amqp_url="amqp://guest:guest@10.0.0.5:5672/%2F")
    assert own.management_url == "http://guest:guest@10.0.0.5:15672/"
    assert own.driver == "local" and own.reconcile_seconds == 10
    explicit = OrchestratorSettings.from_env({"OIH_RABBITMQ_MANAGEMENT_URL": "http://m:1/",
                                              "OIH_ORCHESTRATOR_RECONCILE_SECONDS": "2.5"})
    assert explicit.management_url == "http://m:1/" and explicit.reconcile_seconds == 2.5


def test_worker_urls_carry_only_the_steps_credentials() -> None:
    base = without_credentials("amqp://admin:root@rabbit:5672/tenant-vhost")
    assert base == "amqp://rabbit:5672/tenant-vhost"
    assert with_credentials(base, "oih-flow-f.s", "p/w") == \
        "amqp://oih-flow-f.s:p%2Fw@rabbit:5672/tenant-vhost"
    assert vhost_of("amqp://a:b@h:1/%2F") == "/"
    assert vhost_of("amqp://a:b@h:1") == "/"
    assert vhost_of("amqp://a:b@h:1/prod") == "prod"


def test_entry_step_is_the_node_no_edge_points_to() -> None:
    flow = flows_pb2.Flow(graph=flows_pb2.Graph(
        nodes=[flows_pb2.Node(id="b"), flows_pb2.Node(id="a")],
        edges=[flows_pb2.Edge(source="a", target="b")]))
    assert entry_step(flow) == "a"
    flow.graph.edges.add(source="b", target="a")
    with pytest.raises(StartFailed):
        entry_step(flow)


def test_builtin_components_are_public_python_entry_points() -> None:
    from oih_builtins import BUILTIN_COMPONENTS

    transform = next(builtin_component(c) for c in BUILTIN_COMPONENTS
                     if c["name"] == "transform")
    assert transform.access == cpb.ACCESS_PUBLIC
    assert transform.python_entry_point.object_reference == "oih_builtins.transform:component"
    assert [a.name for a in transform.actions] == ["transform"]
    assert "expression" in transform.actions[0].config_schema["properties"]


def test_registering_builtins_twice_creates_each_once(components_channel: grpc.Channel,
                                                      builtins: dict[str, str]) -> None:
    stub: Any = components_pb2_grpc.ComponentServiceStub(components_channel)
    assert register_builtins(stub) == builtins
    listed = stub.ListComponents(cpb.ListComponentsRequest(filter="access=PUBLIC",
                                                           page_size=1000)).components
    names = [c.display_name for c in listed if c.display_name in builtins]
    assert sorted(names) == sorted(builtins)
    assert {"trigger", "transform", "sink"} <= set(builtins)


def test_start_records_are_forgotten_after_the_retention(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'starts.db'}", tables=TABLES)
    now = datetime.now(UTC)
    with transaction(engine) as session:
        session.add(ExecutionStartRow(flow_id="f", execution_id="old", tenant="tenants/t",
                                      create_time=now - timedelta(days=8)))
        session.add(ExecutionStartRow(flow_id="f", execution_id="new", tenant="tenants/t",
                                      create_time=now))
    assert forget_starts(engine, now - timedelta(days=7)) == 1
    with Session(engine) as session:
        assert session.get(ExecutionStartRow, ("f", "old")) is None
        assert session.get(ExecutionStartRow, ("f", "new")) is not None


@pytest.mark.postgres
def test_start_records_wait_while_the_database_is_unavailable() -> None:
    with postgres.database_created_later((*TABLES, *executions_models.TABLES)) as (url, database_is_back):
        engine = create_engine(url)
        recorder = StartRecorder(engine, interval=0.01)
        recorder.start()
        try:
            started = [Started("f", f"e{n}", "api", 1, datetime.now(UTC), new=True,
                               tenant="tenants/t") for n in range(3)]
            for one in started:
                recorder.add(one)
            time.sleep(0.5)  # some failed rounds
            assert all(recorder.unwritten("f", s.execution_id) for s in started)
            database_is_back()  # at once, with its tables

            def written() -> bool:
                with Session(engine) as session:
                    return all(session.get(ExecutionStartRow, ("f", s.execution_id))
                               for s in started)

            deadline = time.monotonic() + 10
            while not written():
                assert time.monotonic() < deadline, "the queued starts were never written"
                time.sleep(0.1)
            assert recorder.unwritten("f", "e0") is None
        finally:
            recorder.stop()
            engine.dispose()
