"""Consumers: commit then ack, idempotency, retries through delay queues, dead letters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from oih.events.v1 import event_pb2, iam_pb2
from oih_cli.events import main as cli_main
from oih_runtime.bus import (
    Consumer,
    PermanentError,
    ProcessedEvent,
    RetryPolicy,
    build_event,
    list_dead_letters,
    replay_dead_letters,
    topic_matches,
)
from oih_runtime.clock import utcnow
from oih_runtime.db import transaction
from tests.oih_runtime.bus.support import Amqp, Widget, wait_for
from tests.support import postgres

TYPE = "oih.iam.tenant.deleted"
RETRY = RetryPolicy(max_attempts=3, base_delay=0.05, factor=2)  # 50 ms, then 100 ms


def tenant_event(tenant: str = "tenants/t1") -> event_pb2.Event:
    return build_event(TYPE, iam_pb2.TenantChanged(tenant=tenant), source="oih-iam",
                       tenant=tenant, subject=tenant)


def widgets(engine: Engine) -> list[str]:
    with transaction(engine) as session:
        return [w.name for w in session.exec(select(Widget).order_by(Widget.id))]


class Recorder:
    """A handler that records its calls, writes a Widget, and fails while `failing` is set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.failing = False

    def __call__(self, session: Session, event: event_pb2.Event, payload: Any) -> None:
        self.calls.append((event.id, payload))
        session.add(Widget(name=payload.tenant))
        if self.failing:
            raise RuntimeError("downstream unavailable")


@pytest.fixture
def consumer(engine: Engine, amqp: Amqp) -> Iterator[Consumer]:
    consumer = Consumer(engine, amqp.service, url=amqp.url, exchange=amqp.exchange,
                        prefetch=10, retry=RETRY)
    yield consumer
    consumer.stop()


def start(consumer: Consumer) -> None:
    consumer.start()
    assert consumer.ready.wait(10)


def test_handler_commits_then_acks(engine: Engine, amqp: Amqp, consumer: Consumer) -> None:
    handler = Recorder()
    consumer.on(TYPE, handler, iam_pb2.TenantChanged)
    start(consumer)
    event = tenant_event()
    amqp.publish_event(event)
    wait_for(lambda: widgets(engine) == ["tenants/t1"])
    assert handler.calls[0][0] == event.id
    assert handler.calls[0][1] == iam_pb2.TenantChanged(tenant="tenants/t1")
    with transaction(engine) as session:
        processed = session.get(ProcessedEvent, (amqp.service, event.id))
    assert processed is not None and processed.event_type == TYPE
    consumer.stop()
    # Unacked messages would be back in the queue once the consumer is gone.
    assert amqp.depth(amqp.service_queues.main) == 0


def test_duplicate_event_is_handled_once(engine: Engine, amqp: Amqp, consumer: Consumer) -> None:
    handler = Recorder()
    consumer.on("oih.iam.#", handler)  # a pattern; the payload type comes from the Any
    start(consumer)
    event = tenant_event()
    amqp.publish_event(event)
    amqp.publish_event(event)
    amqp.publish_event(tenant_event("tenants/t2"))
    wait_for(lambda: len(widgets(engine)) == 2)
    consumer.stop()
    assert widgets(engine) == ["tenants/t1", "tenants/t2"]
    assert [call[0] for call in handler.calls].count(event.id) == 1
    assert amqp.depth(amqp.service_queues.main) == 0


def test_failing_handler_is_retried_then_dead_lettered_and_replayed(
    engine: Engine, amqp: Amqp, consumer: Consumer, capsys: pytest.CaptureFixture[str],
) -> None:
    handler = Recorder()
    handler.failing = True
    consumer.on(TYPE, handler, iam_pb2.TenantChanged)
    start(consumer)
    first, second = tenant_event("tenants/a"), tenant_event("tenants/b")
    amqp.publish_event(first)
    amqp.publish_event(second)
    dead = amqp.service_queues.dead
    wait_for(lambda: amqp.depth(dead) == 2)
    assert sorted(call[0] for call in handler.calls) == sorted([first.id] * 3 + [second.id] * 3)
    assert widgets(engine) == []  # every failed attempt rolled back

    letters = {letter.id: letter for letter in list_dead_letters(amqp.service, url=amqp.url)}
    assert set(letters) == {first.id, second.id}
    letter = letters[first.id]
    assert letter.attempts == 3
    assert "RuntimeError: downstream unavailable" in letter.error
    assert letter.event_type == TYPE and letter.tenant == "tenants/a"
    assert letter.dead_at is not None
    assert letter.event() == first
    assert amqp.depth(dead) == 2  # listing leaves the queue as it was

    assert cli_main(["dead-letters", amqp.service, "--url", amqp.url]) == 0
    out = capsys.readouterr().out
    assert first.id in out and second.id in out and "downstream unavailable" in out

    handler.failing = False
    assert cli_main(["replay", amqp.service, "--id", second.id, "--url", amqp.url]) == 0
    assert "replayed 1" in capsys.readouterr().out
    wait_for(lambda: widgets(engine) == ["tenants/b"])
    assert [letter.id for letter in list_dead_letters(amqp.service, url=amqp.url)] == [first.id]

    assert replay_dead_letters(amqp.service, url=amqp.url) == 1
    wait_for(lambda: sorted(widgets(engine)) == ["tenants/a", "tenants/b"])
    assert list_dead_letters(amqp.service, url=amqp.url) == []


def test_unparseable_body_is_dead_lettered(engine: Engine, amqp: Amqp,
                                           consumer: Consumer) -> None:
    handler = Recorder()
    consumer.on(TYPE, handler)
    start(consumer)
    amqp.publish_raw(TYPE, b"\xff\xffnot protobuf")
    wait_for(lambda: amqp.depth(amqp.service_queues.dead) == 1)
    [letter] = list_dead_letters(amqp.service, url=amqp.url)
    assert letter.error.startswith("unparseable event")
    assert letter.id  # given one when parked, so it can be replayed by id
    assert letter.body == b"\xff\xffnot protobuf"
    assert handler.calls == []


def test_wrong_payload_type_is_dead_lettered_at_once(engine: Engine, amqp: Amqp,
                                                     consumer: Consumer) -> None:
    handler = Recorder()
    consumer.on(TYPE, handler, iam_pb2.UserChanged)
    start(consumer)
    amqp.publish_event(tenant_event())
    wait_for(lambda: amqp.depth(amqp.service_queues.dead) == 1)
    [letter] = list_dead_letters(amqp.service, url=amqp.url)
    assert letter.attempts == 1 and "oih.events.v1.TenantChanged" in letter.error
    assert handler.calls == []


def test_permanent_error_skips_the_retries(engine: Engine, amqp: Amqp,
                                           consumer: Consumer) -> None:
    calls: list[str] = []

    def handler(session: Session, event: event_pb2.Event, payload: Any) -> None:
        calls.append(event.id)
        raise PermanentError("tenant unknown")

    consumer.on(TYPE, handler)
    start(consumer)
    amqp.publish_event(tenant_event())
    wait_for(lambda: amqp.depth(amqp.service_queues.dead) == 1)
    assert len(calls) == 1
    [letter] = list_dead_letters(amqp.service, url=amqp.url)
    assert letter.attempts == 1 and "tenant unknown" in letter.error


def test_event_without_handler_is_acked(engine: Engine, amqp: Amqp, consumer: Consumer) -> None:
    consumer.on(TYPE, Recorder())
    start(consumer)
    other = build_event("oih.flow.created", iam_pb2.TenantChanged(), source="oih-flows")
    # Straight into the service's queue, as a stale binding would deliver it.
    amqp.channel.basic_publish("", amqp.service_queues.main, other.SerializeToString())
    wait_for(lambda: amqp.depth(amqp.service_queues.main) == 0)
    consumer.stop()
    assert amqp.depth(amqp.service_queues.main) == 0
    assert amqp.depth(amqp.service_queues.dead) == 0


def test_stop_finishes_the_current_message(engine: Engine, amqp: Amqp,
                                           consumer: Consumer) -> None:
    started = threading.Event()

    def slow(session: Session, event: event_pb2.Event, payload: Any) -> None:
        started.set()
        time.sleep(0.5)
        session.add(Widget(name=payload.tenant))

    consumer.on(TYPE, slow)
    start(consumer)
    amqp.publish_event(tenant_event("tenants/slow"))
    amqp.publish_event(tenant_event("tenants/next"))
    assert started.wait(10)
    consumer.stop()
    assert widgets(engine) == ["tenants/slow"]
    # The handled one was acked; the prefetched one went back to the queue.
    assert amqp.depth(amqp.service_queues.main) == 1


def test_list_dead_letters_of_an_unknown_service(amqp: Amqp) -> None:
    assert cli_main(["dead-letters", f"{amqp.service}-none", "--url", amqp.url]) == 1


@pytest.mark.parametrize(("pattern", "key", "expected"), [
    ("oih.flow.created", "oih.flow.created", True),
    ("oih.flow.*", "oih.flow.created", True),
    ("oih.*", "oih.flow.created", False),
    ("oih.#", "oih.flow.created", True),
    ("#", "oih.flow.created", True),
    ("oih.#.created", "oih.created", True),
    ("oih.flow.*", "oih.flow", False),
])
def test_topic_matches(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def test_consumer_forgets_its_old_event_ids_and_only_its_own(engine: Engine, amqp: Amqp) -> None:
    old = utcnow() - timedelta(days=2)
    with transaction(engine) as session:
        for consumer_name in (amqp.service, "another-service"):
            session.add(ProcessedEvent(consumer=consumer_name, event_id="e-old", processed_at=old))

    def remembered() -> set[str]:
        with transaction(engine) as session:
            return {row.consumer for row in session.exec(select(ProcessedEvent)).all()}

    consumer = Consumer(engine, amqp.service, url=amqp.url, exchange=amqp.exchange,
                        keep_processed=timedelta(days=1), forget_every=timedelta(0))
    consumer.on("oih.iam.#", lambda session, event, payload: None)
    consumer.start()
    try:
        wait_for(lambda: remembered() == {"another-service"})
    finally:
        consumer.stop()


@pytest.mark.postgres
def test_a_database_outage_costs_no_attempt_and_dead_letters_nothing(amqp: Amqp) -> None:
    with postgres.database_created_later((ProcessedEvent, Widget)) as (url, database_is_back):
        engine = create_engine(url)
        consumer = Consumer(engine, amqp.service, url=amqp.url, exchange=amqp.exchange,
                            prefetch=10, retry=RETRY, reconnect_initial=0.05)
        handler = Recorder()
        consumer.on(TYPE, handler, iam_pb2.TenantChanged)
        try:
            start(consumer)
            amqp.publish_event(tenant_event("tenants/a"))
            amqp.publish_event(tenant_event("tenants/b"))
            time.sleep(1.5)  # far longer than the whole retry policy (50 ms + 100 ms)
            assert amqp.depth(amqp.service_queues.dead) == 0
            database_is_back()  # at once, with its tables
            wait_for(lambda: sorted(widgets(engine)) == ["tenants/a", "tenants/b"])
            assert amqp.depth(amqp.service_queues.dead) == 0
        finally:
            consumer.stop()
            engine.dispose()
