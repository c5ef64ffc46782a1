"""Fixtures for the event bus tests: databases (SQLite and PostgreSQL), unique broker names."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from sqlalchemy import create_engine, delete, text
from sqlalchemy.engine import Engine

from oih_runtime.bus.models import OutboxEvent, ProcessedEvent
from oih_runtime.db import make_engine
from tests.oih_runtime.bus.support import RETRY_DELAYS_MS, Amqp, Widget, open_amqp
from tests.oih_runtime.conftest_broker import amqp_url, private_broker  # noqa: F401  (fixtures)

PG_ADMIN_URL = os.environ.get("OIH_TEST_POSTGRES_URL",
                              "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


# --- databases ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of its own for this test session, dropped at the end."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"oih_bus_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL not available at {PG_ADMIN_URL}: {exc}")
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'bus.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = make_engine(url, tables=(OutboxEvent, ProcessedEvent, Widget))
    # The PostgreSQL database is shared by the session's tests: start each from empty tables.
    with engine.begin() as connection:
        for model in (OutboxEvent, ProcessedEvent, Widget):
            connection.execute(delete(model))
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def amqp(amqp_url: str) -> Iterator[Amqp]:  # noqa: F811  (the imported fixture)
    helper = open_amqp(amqp_url)
    try:
        yield helper
    finally:
        if not helper.connection.is_open:
            helper.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
            helper.channel = helper.connection.channel()
        helper.cleanup(RETRY_DELAYS_MS)
        helper.connection.close()
