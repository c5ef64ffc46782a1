"""The service's wiring to the event bus, end to end through RabbitMQ: `:start` reaches the
broker through the outbox relay, and an orchestrator's `oih.flow.started` reaches the handler
through the consumer; the sweeper thread runs with the service and stops with it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pika
import pytest
from sqlmodel import Session, select

from oih.components.v1 import components_pb2 as cpb
from oih.events.v1 import orchestrator_pb2
from oih.flows.v1 import flows_pb2 as pb
from oih_flows.models import FlowRow
from oih_flows.server import Built, build
from oih_flows.settings import FlowsSettings
from oih_runtime import settings as runtime_settings
from oih_runtime.bus import OutboxEvent, build_event
from oih_runtime.principal import Principal
from tests.oih_flows.conftest import two_node_flow
from tests.oih_runtime.conftest_broker import amqp_url  # noqa: F401  (fixture)
from tests.support.tokens import TestIssuer

COMPONENT = cpb.Component(name="components/c", triggers=[cpb.ComponentFunction(name="timer")],
                          actions=[cpb.ComponentFunction(name="log")])
USER = Principal(subject="users/u", tenant="tenants/t",
                 permissions=frozenset({"flows.write", "flows.control"}))


def wait_for(predicate: Callable[[], object], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.fixture
def wired(amqp_url: str, tmp_path: Path) -> Iterator[tuple[Built, str]]:  # noqa: F811
    suffix = uuid.uuid4().hex[:8]
    exchange, consumer = f"test.oih.events.{suffix}", f"flows-{suffix}"
    config = replace(runtime_settings.load("flows", {}), rabbitmq_url=amqp_url,
                     database_url=f"sqlite:///{tmp_path / 'flows.db'}", data_dir=tmp_path)
    built = build(config, FlowsSettings.from_env({}), verifier=TestIssuer().verifier,
                  components=lambda name: COMPONENT, exchange=exchange,
                  consumer_name=consumer)
    built.start_background()
    try:
        yield built, exchange
    finally:
        for stop in built.service.on_stop:
            stop()
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        channel = connection.channel()
        assert built.consumer is not None
        for queue in (built.consumer.queues.main, built.consumer.queues.dead,
                      *(built.consumer.queues.retry(d)
                        for d in built.consumer.retry.delays_ms())):
            channel.queue_delete(queue)
        channel.exchange_delete(exchange)
        connection.close()
        built.engine.dispose()


def test_start_is_relayed_and_started_event_makes_the_flow_active(
        wired: tuple[Built, str], amqp_url: str) -> None:  # noqa: F811
    built, exchange = wired
    assert built.sweeper.running
    flow = built.flows.create(USER, two_node_flow("components/c"))
    built.flows.start(USER, f"flows/{flow.id}")

    def starting_sent() -> bool:
        with Session(built.engine) as session:
            row = session.exec(select(OutboxEvent).where(
                OutboxEvent.event_type == "oih.flow.starting")).one()
            return row.sent_at is not None

    wait_for(starting_sent)
    assert built.consumer is not None and built.consumer.ready.wait(20)

    # The orchestrator's answer, published as it would publish it.
    event = build_event("oih.flow.started", orchestrator_pb2.FlowStateChanged(
        flow=f"flows/{flow.id}", tenant="tenants/t"), source="oih-orchestrator")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    connection.channel().basic_publish(exchange, event.type, event.SerializeToString())
    connection.close()

    def active() -> bool:
        with Session(built.engine) as session:
            row = session.get(FlowRow, flow.id)
            return row is not None and row.state == pb.STATE_ACTIVE

    wait_for(active)


def test_on_stop_stops_the_sweeper(wired: tuple[Built, str]) -> None:
    built, _ = wired
    for stop in built.service.on_stop:
        stop()
    assert not built.sweeper.running
