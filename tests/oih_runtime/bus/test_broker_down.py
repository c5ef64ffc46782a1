"""A broker outage: the API call still commits, the relay and the consumer catch up afterwards.

Slow (a private RabbitMQ node is stopped and started), so one node serves the whole module.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from oih.events.v1 import event_pb2, iam_pb2
from oih_cli import broker as broker_module
from oih_cli.broker import BrokerError, PrivateBroker, broker_answers, ensure_broker
from oih_runtime.bus import Consumer, Outbox, OutboxEvent, ProcessedEvent, Relay, RetryPolicy
from oih_runtime.db import transaction
from tests.oih_runtime.bus.support import RETRY_DELAYS_MS, Amqp, Widget, open_amqp, wait_for

OUTBOX = Outbox("oih-test")
TYPE = "oih.iam.tenant.deleted"


@pytest.fixture
def private_amqp(private_broker: PrivateBroker) -> Iterator[Amqp]:
    """Unique names on the private broker; the queues and exchange are removed afterwards."""
    names = open_amqp(private_broker.url)
    names.connection.close()  # the broker goes away during the test; reconnect to clean up
    yield names
    if not private_broker.is_running():
        private_broker.start()
    cleanup = open_amqp(private_broker.url)
    cleanup.exchange, cleanup.service = names.exchange, names.service
    try:
        cleanup.cleanup(RETRY_DELAYS_MS)
    finally:
        cleanup.connection.close()


def count(engine: Engine, *conditions: Any, model: Any = OutboxEvent) -> int:
    with transaction(engine) as session:
        return int(session.exec(select(func.count()).select_from(model).where(*conditions)).one())


def test_events_wait_for_the_broker_and_are_delivered_after_a_restart(
    engine: Engine, private_broker: PrivateBroker, private_amqp: Amqp,
) -> None:
    names = private_amqp
    handled: list[str] = []

    def handler(session: Session, event: event_pb2.Event, payload: Any) -> None:
        handled.append(event.id)
        session.add(Widget(name=payload.tenant))

    relay = Relay(engine, url=private_broker.url, exchange=names.exchange, poll_interval=0.5,
                  reconnect_initial=0.2, reconnect_max=1.0)
    consumer = Consumer(engine, names.service, url=private_broker.url, exchange=names.exchange,
                        retry=RetryPolicy(max_attempts=3, base_delay=0.05, factor=2),
                        reconnect_initial=0.2, reconnect_max=1.0)
    consumer.on(TYPE, handler)
    try:
        relay.start()
        consumer.start()
        assert relay.connected.wait(15) and consumer.ready.wait(15)
        with transaction(engine) as session:
            OUTBOX.add(session, TYPE, iam_pb2.TenantChanged(tenant="tenants/before"))
        wait_for(lambda: len(handled) == 1)

        private_broker.stop()
        assert not broker_answers(private_broker.url)
        # The API call: state change and events commit although the broker is down.
        with transaction(engine) as session:
            session.add(Widget(name="api change"))
            added = [OUTBOX.add(session, TYPE, iam_pb2.TenantChanged(tenant=f"tenants/{i}"))
                     for i in range(5)]
        time.sleep(1.5)  # a few reconnect attempts of the relay fail meanwhile
        assert count(engine, OutboxEvent.sent_at.is_(None)) == 5  # type: ignore[union-attr]

        private_broker.start()
        wait_for(lambda: count(engine, OutboxEvent.sent_at.is_(None)) == 0,  # type: ignore[union-attr]
                 timeout=60)
        # The consumer reconnected on its own and handles the events once each.
        wait_for(lambda: set(handled) >= {e.id for e in added}, timeout=60)
        # The handler records an event before its transaction commits: wait for the commit.
        wait_for(lambda: count(engine, model=ProcessedEvent) == 6)
        assert len(handled) == len(set(handled)) == 6
    finally:
        consumer.stop()
        relay.stop()


def test_private_broker_serves_the_management_api(private_broker: PrivateBroker) -> None:
    request = urllib.request.Request(
        private_broker.management_url + "api/overview",
        headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["node"] == private_broker.nodename


def test_ensure_broker_keeps_a_broker_that_answers(private_broker: PrivateBroker,
                                                   tmp_path: Path) -> None:
    if not private_broker.is_running():
        private_broker.start()
    assert ensure_broker(private_broker.url, tmp_path / "unused") == private_broker.url
    assert not (tmp_path / "unused").exists()  # no second node was started


def test_missing_rabbitmq_is_reported_clearly(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setattr(broker_module, "RABBITMQ_BIN", tmp_path / "nowhere")
    with pytest.raises(BrokerError, match="install the Debian package rabbitmq-server"):
        PrivateBroker(tmp_path / "data").start()
