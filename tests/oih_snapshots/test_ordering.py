"""Writes apply in emission order whatever order they arrive in (OIH #1330), on SQLite and
PostgreSQL, and through the real broker: shuffled and redelivered writes keep the newest."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator

import pika
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih.events.v1 import event_pb2, orchestrator_pb2
from oih.events.v1 import flows_pb2 as flow_events
from oih_dataplane import topology
from oih_runtime.bus.models import OutboxEvent
from oih_runtime.db import transaction
from oih_snapshots import events, ingest
from oih_snapshots.models import SnapshotRow

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/%2F"


def known_flow(engine: Engine, flow_id: str, tenant: str = "tenants/t1") -> None:
    with transaction(engine) as session:
        events.flow_created(session, event_pb2.Event(),
                            flow_events.FlowChanged(flow=f"flows/{flow_id}", tenant=tenant))


def write(flow_id: str, sequence: int, data: dict[str, object], step: str = "poll",
          execution: str = "") -> bytes:
    body: dict[str, object] = {"name": f"flows/{flow_id}/steps/{step}/snapshot", "data": data,
                               "sequence": str(sequence)}
    if execution:
        body["executionId"] = execution
    return json.dumps(body).encode()


def stored(engine: Engine, flow_id: str, step: str = "poll", execution: str = ""
           ) -> SnapshotRow | None:
    with Session(engine) as session:
        return session.get(SnapshotRow, (flow_id, step, execution))


def test_older_write_never_overwrites_a_newer_one(engine: Engine) -> None:
    known_flow(engine, "f1")
    exchange = topology.exchange_name("f1")
    writes = [(n, {"position": n}) for n in range(1, 31)]
    delivered = writes + random.Random(7).sample(writes, 10)  # redeliveries
    random.Random(1).shuffle(delivered)
    for sequence, data in delivered:
        ingest.apply(engine, exchange, write("f1", sequence, data))
    row = stored(engine, "f1")
    assert row is not None and row.data == {"position": 30} and row.sequence == 30
    with Session(engine) as session:
        announced = session.exec(select(OutboxEvent).where(
            col(OutboxEvent.event_type) == "oih.snapshot.updated")).all()
    # One event per applied write: the dropped ones changed nothing.
    applied = 0
    best = 0
    for sequence, _ in delivered:
        if sequence > best:
            best, applied = sequence, applied + 1
    assert len(announced) == applied


def test_a_write_for_another_flow_is_refused(engine: Engine) -> None:
    known_flow(engine, "mine")
    known_flow(engine, "theirs", tenant="tenants/other")
    with pytest.raises(ingest.Malformed):
        ingest.apply(engine, topology.exchange_name("mine"), write("theirs", 5, {"x": 1}))
    assert stored(engine, "theirs") is None


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"name": "x", "data": {}}',
                                  write("f1", 0, {}), b'{"name": "flows/f1/steps/../snapshot",'
                                  b' "data": {}, "sequence": "3"}'])
def test_malformed_writes_are_refused(engine: Engine, body: bytes) -> None:
    known_flow(engine, "f1")
    with pytest.raises(ingest.Malformed):
        ingest.apply(engine, topology.exchange_name("f1"), body)


def test_write_of_an_unknown_flow_waits(engine: Engine) -> None:
    with pytest.raises(ingest.NotYet):
        ingest.apply(engine, topology.exchange_name("later"), write("later", 1, {}))


def test_an_unheard_of_flow_is_looked_up_once(engine: Engine) -> None:
    """A flow created before the service ran: its tenant comes from the Flow Repository."""
    asked: list[str] = []

    def lookup(flow_id: str) -> str | None:
        asked.append(flow_id)
        return "tenants/t9" if flow_id == "old" else None

    assert ingest.apply(engine, topology.exchange_name("old"), write("old", 1, {"p": 1}), lookup)
    assert ingest.apply(engine, topology.exchange_name("old"), write("old", 2, {"p": 2}), lookup)
    row = stored(engine, "old")
    assert row is not None and row.tenant == "tenants/t9" and row.data == {"p": 2}
    assert asked == ["old"]  # remembered after the first answer
    with pytest.raises(ingest.Malformed):  # the flow does not exist: dropped, not retried
        ingest.apply(engine, topology.exchange_name("gone"), write("gone", 1, {}), lookup)


def test_execution_snapshots_go_when_the_execution_finishes(engine: Engine) -> None:
    known_flow(engine, "f1")
    exchange = topology.exchange_name("f1")
    ingest.apply(engine, exchange, write("f1", 5, {"page": 2}, execution="e1"))
    ingest.apply(engine, exchange, write("f1", 6, {"keep": True}))
    with transaction(engine) as session:
        events.execution_finished(session, event_pb2.Event(), orchestrator_pb2.ExecutionFinished(
            execution="flows/f1/executions/e1", succeeded=True, tenant="tenants/t1"))
    row = stored(engine, "f1", execution="e1")
    assert row is not None and row.deleted
    # A late redelivery of the execution's write cannot bring it back.
    assert not ingest.apply(engine, exchange, write("f1", 5, {"page": 2}, execution="e1"))
    gone = stored(engine, "f1", execution="e1")
    assert gone is not None and gone.deleted
    kept = stored(engine, "f1")
    assert kept is not None and kept.data == {"keep": True}


@pytest.fixture
def snapshot_queue() -> Iterator[tuple[pika.adapters.blocking_connection.BlockingChannel, str,
                                       str]]:
    """A flow exchange bound to a private snapshots queue on the real broker."""
    flow_id = f"order-{uuid.uuid4().hex[:8]}"
    queue = topology.snapshots_queue(f"test-{flow_id}")
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ))
    channel = connection.channel()
    topology.declare_flow(channel, flow_id, {}, queue)
    yield channel, flow_id, queue
    topology.delete_flow(channel, flow_id, [])
    channel.queue_delete(queue)
    connection.close()


def test_shuffled_and_redelivered_writes_through_the_broker_keep_the_newest(
        engine: Engine, snapshot_queue: tuple[object, str, str]) -> None:
    channel, flow_id, queue = snapshot_queue
    known_flow(engine, flow_id)
    writes = list(range(1, 51))
    random.Random(3).shuffle(writes)
    for sequence in [*writes, *writes[:10]]:
        channel.basic_publish(  # type: ignore[attr-defined]
            topology.exchange_name(flow_id), topology.SNAPSHOT_KEY,
            write(flow_id, sequence, {"position": sequence}))
    consumer = ingest.SnapshotConsumer(engine, RABBITMQ, queue)
    consumer.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            depth = channel.queue_declare(queue, passive=True).method  # type: ignore[attr-defined]
            if depth.message_count == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # the last unacked ones
    finally:
        consumer.stop()
    row = stored(engine, flow_id)
    assert row is not None and row.data == {"position": 50} and row.sequence == 50
