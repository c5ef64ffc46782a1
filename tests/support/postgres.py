"""Throw-away PostgreSQL databases on the local server (trust auth), one per use."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import psycopg2
from sqlmodel import SQLModel

from oih_runtime.db import make_engine

ADMIN_URL = os.environ.get("OIH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _admin_execute(statement: str) -> None:
    connection = psycopg2.connect(ADMIN_URL)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create an empty database, yield its SQLAlchemy URL, drop it afterwards."""
    name = f"oih_test_{uuid.uuid4().hex[:12]}"
    _admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://") + "/" + name
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def database_created_later(tables: Iterable[type[SQLModel]]
                           ) -> Iterator[tuple[str, Callable[[], None]]]:
    """The SQLAlchemy URL of a database that does not exist yet — connecting fails with the
    OperationalError a server that is away gives — and a function that makes it appear at
    once with `tables` (the database is back: made under another name, then renamed, so no
    one sees it half made); dropped afterwards."""
    name = f"oih_test_{uuid.uuid4().hex[:12]}"
    server = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://")

    def appear() -> None:
        _admin_execute(f'CREATE DATABASE "{name}_new"')
        engine = make_engine(f"{server}/{name}_new", tables=tables)
        engine.dispose()
        _admin_execute(f'ALTER DATABASE "{name}_new" RENAME TO "{name}"')

    try:
        yield f"{server}/{name}", appear
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}_new" WITH (FORCE)')
