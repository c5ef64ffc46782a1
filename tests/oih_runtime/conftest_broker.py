"""Broker fixtures shared by runtime tests (import them into a conftest.py).

`amqp_url`: the system broker (OIH_RABBITMQ_URL or 127.0.0.1:5672), or a private node when none
answers. `private_broker`: a module-scoped private node that a test may stop and start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from oih_cli.broker import RABBITMQ_BIN, PrivateBroker, broker_answers
from oih_runtime.bus.topology import rabbitmq_url


def _require_rabbitmq() -> None:
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        pytest.skip("install the Debian package rabbitmq-server")


@pytest.fixture(scope="session")
def amqp_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = rabbitmq_url()
    if broker_answers(url):
        yield url
        return
    _require_rabbitmq()
    broker = PrivateBroker(Path(tmp_path_factory.mktemp("rabbitmq-session")))
    broker.start()
    try:
        yield broker.url
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    """Started once per module (≈5 s to start, ≈4 s to stop); tests may stop and start it."""
    _require_rabbitmq()
    broker = PrivateBroker(Path(tmp_path_factory.mktemp("rabbitmq-private")))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
