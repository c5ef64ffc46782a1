"""The service's bus wiring over a real RabbitMQ: the outbox relay publishes our events, and
the consumer (with the handlers `events.register` installs, as `server.build` does) applies
IAM's deletions. Uses an exchange and queues of its own, removed afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from oih.components.v1 import components_pb2 as pb
from oih.components.v1 import components_pb2_grpc
from oih.events.v1 import event_pb2
from oih.events.v1 import iam_pb2 as iam_events
from oih_components import events
from oih_components.server import Built
from oih_runtime.bus import Consumer, Relay, RetryPolicy, build_event
from tests.oih_components.conftest import Caller, entry_point_component
from tests.oih_runtime.bus.support import Amqp, open_amqp, wait_for
from tests.oih_runtime.conftest_broker import amqp_url  # noqa: F401  (fixture)

Stub = components_pb2_grpc.ComponentServiceStub
RETRY = RetryPolicy(max_attempts=3, base_delay=0.05, factor=2)


@pytest.fixture
def wired(components_service: Built, amqp_url: str  # noqa: F811
          ) -> Iterator[tuple[Amqp, str]]:
    """A running relay and consumer on a private exchange; yields it and a queue that sees
    every `oih.component.*` event."""
    amqp = open_amqp(amqp_url)
    consumer = Consumer(components_service.engine, amqp.service, url=amqp_url,
                        exchange=amqp.exchange, retry=RETRY)
    events.register(consumer)
    relay = Relay(components_service.engine, url=amqp_url, exchange=amqp.exchange,
                  poll_interval=0.1)
    observed = amqp.bind_queue("oih.component.#")
    consumer.start()
    relay.start()
    try:
        wait_for(consumer.ready.is_set)
        yield amqp, observed
    finally:
        relay.stop()
        consumer.stop()
        amqp.cleanup(RETRY.delays_ms())
        amqp.connection.close()


def received(amqp: Amqp, queue: str) -> tuple[str, str]:
    [(_, body)] = amqp.get_all(queue, 1)
    event = event_pb2.Event.FromString(body)
    return event.type, event.subject


def test_changes_are_published_and_iam_deletions_are_applied(
        grpc_stub: Stub, make_caller: Callable[..., Caller], wired: tuple[Amqp, str]) -> None:
    amqp, observed = wired
    alice, bob = make_caller(), make_caller()
    created = grpc_stub.CreateComponent(pb.CreateComponentRequest(component=entry_point_component(
        owners=[pb.Owner(id=bob.subject, type=pb.OWNER_TYPE_USER)])), metadata=alice.md)
    assert received(amqp, observed) == (events.CREATED, created.name)

    amqp.publish_event(build_event("oih.iam.user.deleted",
                                   iam_events.UserChanged(user=bob.subject, tenant=bob.tenant),
                                   source="oih-iam", tenant=bob.tenant, subject=bob.subject))

    def owners() -> list[str]:
        found = grpc_stub.GetComponent(pb.GetComponentRequest(name=created.name),
                                       metadata=alice.md)
        return [o.id for o in found.owners]

    wait_for(lambda: owners() == [alice.subject])
    assert received(amqp, observed) == (events.UPDATED, created.name)
