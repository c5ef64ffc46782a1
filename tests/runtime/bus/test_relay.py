"""The relay publishes outbox rows with pipelined confirms and marks them sent."""

from __future__ import annotations

import time

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import select

from oih.events.v1 import event_pb2, iam_pb2
from oih_runtime.bus import Outbox, OutboxEvent, Relay
from oih_runtime.db import transaction
from tests.runtime.bus.support import Amqp, wait_for

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
