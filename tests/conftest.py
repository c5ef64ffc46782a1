"""Fixtures every suite may use: the databases a service's tests run on."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from oih_runtime.db import make_engine
from tests.support import postgres


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[str]:
    """Each test module runs once on SQLite (a temporary file) and once on a fresh
    PostgreSQL database, which is dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'service.db'}"
    else:
        with postgres.fresh_database() as url:
            yield url


@pytest.fixture
def tables() -> Sequence[type[SQLModel]]:
    """The models whose tables `engine` creates: a test module overrides this fixture."""
    return ()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path, tables: Sequence[type[SQLModel]]
           ) -> Iterator[Engine]:
    """An engine with `tables` on a fresh SQLite file, then on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        built = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", tables=tables)
        yield built
        built.dispose()
    else:
        with postgres.fresh_database() as url:
            built = make_engine(url, tables=tables)
            yield built
            built.dispose()
