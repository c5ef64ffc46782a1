"""Fixtures: a RabbitMQ broker (the system one, else a private node) and a flow harness that
declares a topology, runs real worker processes and cleans everything up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from oih_cli.broker import RABBITMQ_BIN, PrivateBroker, broker_answers
from tests.oih_worker.support import FlowHarness

SYSTEM_BROKER = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture(scope="session")
def amqp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if broker_answers(SYSTEM_BROKER):
        yield SYSTEM_BROKER
        return
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 and rabbitmq-server is not installed")
    broker = PrivateBroker(Path(tmp_path_factory.mktemp("rabbitmq")))
    broker.start()
    try:
        yield broker.url
    finally:
        broker.stop()


@pytest.fixture
def harness(amqp_url: str, tmp_path: Path) -> Iterator[FlowHarness]:
    flow = FlowHarness(amqp_url, tmp_path)
    try:
        yield flow
    finally:
        flow.close()
