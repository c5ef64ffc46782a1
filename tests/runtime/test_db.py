"""The shared database runtime on real SQLite and PostgreSQL: concurrent transactions and what
an error message may show."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel

from oih_runtime.db import make_engine, transaction


class CounterRow(SQLModel, table=True):
    __tablename__ = "test_runtime_counter"
    id: str = Field(primary_key=True)
    value: int = 0
    secret: str = ""


@pytest.fixture
def tables() -> list[type[SQLModel]]:
    return [CounterRow]


def test_sqlite_locked_read_then_write_transactions_from_many_threads_lose_no_update(
        tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", tables=[CounterRow])
    with transaction(engine) as session:
        session.add(CounterRow(id="c"))

    def increment(_: int) -> None:
        with transaction(engine, lock=True) as session:
            row = session.get(CounterRow, "c")
            assert row is not None
            row.value += 1
            session.add(row)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(increment, range(200)))
    with transaction(engine) as session:
        row = session.get(CounterRow, "c")
        assert row is not None and row.value == 200
    engine.dispose()


def test_database_errors_do_not_show_statement_parameters(engine: Engine) -> None:
    with transaction(engine) as session:
        session.add(CounterRow(id="a"))
    with pytest.raises(IntegrityError) as duplicate, transaction(engine) as session:
        session.add(CounterRow(id="a", secret="s3cr3t-hash-value"))
    assert "s3cr3t-hash-value" not in str(duplicate.value)
