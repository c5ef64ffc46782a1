"""The relay publishes outbox rows with pipelined confirms, marks them sent (dropping their
bodies), forgets them after a while, and never reads the sent ones to find the next batch."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from google.protobuf import struct_pb2
from sqlalchemy import create_engine, func
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from oih.events.v1 import event_pb2, iam_pb2
from oih_runtime.bus import Outbox, OutboxEvent, Relay
from oih_runtime.clock import utcnow
from oih_runtime.db import make_engine, transaction
from tests.oih_runtime.bus.support import Amqp, wait_for
from tests.support import postgres
from tests.support.query_plans import assert_served_by_index

OUTBOX = Outbox("oih-test")


def unsent(engine: Engine) -> int:
    with transaction(engine) as session:
        return int(session.exec(select(func.count()).select_from(OutboxEvent)
                                .where(OutboxEvent.sent_at.is_(None))).one())  # type: ignore[union-attr]


def add_events(engine: Engine, count: int, event_type: str = "oih.iam.tenant.deleted"
               ) -> list[event_pb2.Event]:
    with transaction(engine) as session:
        return [OUTBOX.add(session, event_type, iam_pb2.TenantChanged(tenant=f"tenants/{i}"),
                           tenant=f"tenants/{i}", subject=f"tenants/{i}", request_id=f"r{i}")
                for i in range(count)]


def test_relay_publishes_in_order_with_envelope_attributes(engine: Engine, amqp: Amqp) -> None:
    queue = amqp.bind_queue("oih.iam.#")
    added = add_events(engine, 25)
    with Relay(engine, url=amqp.url, exchange=amqp.exchange, poll_interval=0.2):
        messages = amqp.get_all(queue, 25)
        wait_for(lambda: unsent(engine) == 0)
    assert [event_pb2.Event.FromString(body).id for _, body in messages] == [e.id for e in added]
    properties, body = messages[3]
    event = event_pb2.Event.FromString(body)
    assert event == added[3]
    assert properties.message_id == event.id
    assert properties.type == "oih.iam.tenant.deleted"
    assert properties.app_id == "oih-test"
    assert properties.content_type == "application/protobuf"
    assert properties.delivery_mode == 2
    assert properties.timestamp == event.time.seconds
    assert properties.headers == {"tenant": "tenants/3", "subject": "tenants/3",
                                  "request_id": "r3"}
    with transaction(engine) as session:
        rows = session.exec(select(OutboxEvent)).all()
    assert all(row.sent_at is not None and row.claimed_by for row in rows)


def test_relay_publishes_2000_events_pipelined(engine: Engine, amqp: Amqp) -> None:
    queue = amqp.bind_queue()
    add_events(engine, 2000)
    with Relay(engine, url=amqp.url, exchange=amqp.exchange, batch_size=500):
        wait_for(lambda: unsent(engine) == 0, timeout=60)
    wait_for(lambda: amqp.depth(queue) == 2000)


def test_relay_wakes_on_commit_without_waiting_for_the_poll(engine: Engine,
                                                            amqp: Amqp) -> None:
    queue = amqp.bind_queue()
    relay = Relay(engine, url=amqp.url, exchange=amqp.exchange, poll_interval=60)
    with relay:
        assert relay.connected.wait(10)
        time.sleep(0.3)  # the relay is now idle until the next poll, 60 s away
        add_events(engine, 1)
        assert len(amqp.get_all(queue, 1, timeout=10)) == 1


def test_two_relays_publish_each_event_once(engine: Engine, amqp: Amqp) -> None:
    queue = amqp.bind_queue()
    added = add_events(engine, 600)
    relays = [Relay(engine, url=amqp.url, exchange=amqp.exchange, batch_size=50,
                    name=f"relay-{i}") for i in range(2)]
    for relay in relays:
        relay.start()
    try:
        wait_for(lambda: unsent(engine) == 0, timeout=60)
    finally:
        for relay in relays:
            relay.stop()
    ids = [event_pb2.Event.FromString(body).id for _, body in amqp.get_all(queue, 600)]
    assert sorted(ids) == sorted(e.id for e in added)
    assert amqp.depth(queue) == 0  # nothing published twice


def test_relayed_event_keeps_its_id_but_not_its_body(engine: Engine, amqp: Amqp) -> None:
    queue = amqp.bind_queue()
    added = add_events(engine, 3)
    with Relay(engine, url=amqp.url, exchange=amqp.exchange, poll_interval=0.2):
        assert len(amqp.get_all(queue, 3)) == 3
        wait_for(lambda: unsent(engine) == 0)
    with transaction(engine) as session:
        rows = session.exec(select(OutboxEvent).order_by(col(OutboxEvent.seq))).all()
    assert [row.event_id for row in rows] == [event.id for event in added]
    assert [row.body for row in rows] == [b"", b"", b""]


def test_relay_forgets_sent_events_after_keep_sent(engine: Engine, amqp: Amqp) -> None:
    queue = amqp.bind_queue()
    add_events(engine, 40)
    relay = Relay(engine, url=amqp.url, exchange=amqp.exchange, poll_interval=0.1,
                  keep_sent=timedelta(0), purge_every=timedelta(0))
    with relay:
        assert len(amqp.get_all(queue, 40)) == 40
        wait_for(lambda: rows(engine) == 0)
        add_events(engine, 2)  # a later event is still relayed after the purge
        assert len(amqp.get_all(queue, 2)) == 2


def test_sqlite_outbox_file_shrinks_after_the_purge(tmp_path: Path, amqp: Amqp) -> None:
    path = tmp_path / "service.db"
    engine = make_engine(f"sqlite:///{path}", tables=(OutboxEvent,))
    queue = amqp.bind_queue()
    with transaction(engine) as session:  # about 8 MiB of event bodies
        for i in range(200):
            OUTBOX.add(session, "oih.test.big", struct_pb2.Value(string_value=f"{i}" * 40_000))
    grown = _file_size(engine, path)
    with Relay(engine, url=amqp.url, exchange=amqp.exchange, poll_interval=0.1,
               keep_sent=timedelta(0), purge_every=timedelta(0)):
        assert len(amqp.get_all(queue, 200)) == 200
        wait_for(lambda: rows(engine) == 0)
        wait_for(lambda: _file_size(engine, path) < grown / 10)
    engine.dispose()


def test_claiming_reads_only_unsent_rows(engine: Engine) -> None:
    """The relay's candidates come from the partial index of unsent rows, not a scan of the
    outbox's history (the cost of a batch must not grow with the events already sent)."""
    add_events(engine, 3)
    assert_served_by_index(engine, Relay(engine).candidates(utcnow()))


def rows(engine: Engine) -> int:
    with transaction(engine) as session:
        return int(session.exec(select(func.count()).select_from(OutboxEvent)).one())


def _file_size(engine: Engine, path: Path) -> int:
    with engine.connect() as connection:  # move the WAL's pages into the file first
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


@pytest.mark.postgres
def test_relay_waits_for_the_database_on_the_same_broker_connection(amqp: Amqp) -> None:
    with postgres.database_created_later((OutboxEvent,)) as (url, database_is_back):
        engine = create_engine(url)
        queue = amqp.bind_queue()
        relay = Relay(engine, url=amqp.url, exchange=amqp.exchange, poll_interval=0.2,
                      reconnect_initial=0.05, reconnect_max=0.2)
        with relay:
            assert relay.connected.wait(10)
            publisher = relay._publisher
            time.sleep(1)  # several failed rounds
            assert relay.connected.is_set() and relay._publisher is publisher
            database_is_back()  # at once, with its tables
            add_events(engine, 3)
            assert len(amqp.get_all(queue, 3, timeout=10)) == 3
            assert relay._publisher is publisher  # the same broker connection throughout
        engine.dispose()
