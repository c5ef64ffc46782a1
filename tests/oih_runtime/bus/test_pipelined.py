"""The trigger path's shared publisher against a real RabbitMQ: concurrent callers share
broker rounds, each learns its own outcome, and nothing is reported confirmed that is not."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pika
import pytest

from oih_cli.broker import PrivateBroker
from oih_runtime.bus.pipelined import PipelinedPublisher, Unroutable
from oih_runtime.bus.publisher import PublisherError


def _properties() -> pika.BasicProperties:
    return pika.BasicProperties(message_id=str(uuid.uuid4()), delivery_mode=2)


@pytest.fixture()
def exchange(amqp_url: str) -> Iterator[tuple[str, str]]:
    name = f"test.pipelined.{uuid.uuid4().hex[:8]}"
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        channel = connection.channel()
        channel.exchange_declare(name, "topic", durable=False, auto_delete=False)
        channel.queue_declare(name, durable=False)
        channel.queue_bind(name, name, routing_key="bound")
    yield name, amqp_url
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        channel = connection.channel()
        channel.queue_delete(name)
        channel.exchange_delete(name)


def test_concurrent_callers_share_rounds_and_all_are_confirmed(
        exchange: tuple[str, str]) -> None:
    name, url = exchange
    publisher = PipelinedPublisher(url)
    publisher.start()
    try:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda i: publisher.publish(name, "bound", b"%d" % i, _properties()),
                          range(400)))
        assert publisher.rounds < 400  # batched: fewer broker rounds than messages
    finally:
        publisher.stop()
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        assert connection.channel().queue_declare(name, passive=True).method.message_count == 400


def test_an_unroutable_message_fails_only_its_caller(exchange: tuple[str, str]) -> None:
    name, url = exchange
    publisher = PipelinedPublisher(url)
    try:
        lost = publisher.submit(name, "nobody-listens", b"x", _properties())
        kept = publisher.submit(name, "bound", b"y", _properties())
        with pytest.raises(Unroutable):
            lost.result(timeout=30)
        assert kept.result(timeout=30) is None
    finally:
        publisher.stop()


def test_a_stopped_broker_fails_callers_instead_of_hanging(
        private_broker: PrivateBroker) -> None:
    with pika.BlockingConnection(pika.URLParameters(private_broker.url)) as connection:
        channel = connection.channel()
        channel.queue_declare("pipelined", durable=False)
        channel.queue_bind("pipelined", "amq.topic", routing_key="x")
    publisher = PipelinedPublisher(private_broker.url, confirm_timeout=5)
    try:
        publisher.publish("amq.topic", "x", b"warm", _properties())  # connected
        private_broker.stop()
        with pytest.raises((PublisherError, ConnectionError, TimeoutError)):
            publisher.publish("amq.topic", "x", b"lost", _properties(), timeout=30)
    finally:
        publisher.stop()
        private_broker.start()
