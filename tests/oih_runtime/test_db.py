"""The shared database runtime on real SQLite and PostgreSQL: concurrent transactions and what
an error message may show."""

from __future__ import annotations

import sqlite3
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import Index, create_engine, delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Field, SQLModel

from oih_runtime.db import (
    is_unavailable,
    make_engine,
    normalise_url,
    reclaim_free_pages,
    transaction,
)
from oih_runtime.interceptors import ErrorInterceptor
from tests.gateway.conftest import free_port
from tests.support import postgres


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


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_plain_postgresql_urls_as_the_deploy_readme_writes_them_work(scheme: str) -> None:
    with postgres.fresh_database() as url:
        plain = url.replace("postgresql+psycopg2://", f"{scheme}://")
        built = make_engine(plain, tables=[CounterRow])
        try:
            with transaction(built) as session:
                session.add(CounterRow(id="a", value=1))
            with transaction(built) as session:
                row = session.get(CounterRow, "a")
                assert row is not None and row.value == 1
            assert built.dialect.name == "postgresql" and built.dialect.driver == "psycopg2"
        finally:
            built.dispose()


def test_url_normalisation_keeps_other_urls_and_passwords() -> None:
    assert normalise_url("postgresql://u:p%40ss@h:5432/d") == "postgresql+psycopg2://u:p%40ss@h:5432/d"
    assert normalise_url("postgresql+psycopg2://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert normalise_url("sqlite:///var/x.db") == "sqlite:///var/x.db"


class IndexedRow(SQLModel, table=True):
    __tablename__ = "test_runtime_indexed"
    __table_args__ = (Index("ix_test_runtime_indexed_page", "tenant", "id"),)
    id: str = Field(primary_key=True)
    tenant: str = ""


def test_an_existing_sqlite_file_gets_incremental_vacuum_and_the_indexes_added_since(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # made by an older version: no auto_vacuum, no index
        old.execute("CREATE TABLE test_runtime_indexed (id VARCHAR PRIMARY KEY, "
                    "tenant VARCHAR NOT NULL)")
        old.executemany("INSERT INTO test_runtime_indexed VALUES (?, 't')",
                        [(str(i),) for i in range(100)])
    old.close()
    engine = make_engine(f"sqlite:///{path}", tables=[IndexedRow])
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2  # INCREMENTAL
        indexes = {row[1] for row in connection.exec_driver_sql(
            "PRAGMA index_list('test_runtime_indexed')")}
        assert "ix_test_runtime_indexed_page" in indexes
        assert connection.exec_driver_sql(
            "SELECT count(*) FROM test_runtime_indexed").scalar() == 100
    engine.dispose()


def test_reclaiming_free_pages_shrinks_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    engine = make_engine(f"sqlite:///{path}", tables=[CounterRow])
    with transaction(engine) as session:
        for i in range(2000):
            session.add(CounterRow(id=str(i), secret="x" * 2000))
    with transaction(engine) as session:
        session.execute(delete(CounterRow))

    def size() -> int:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return path.stat().st_size

    grown = size()
    reclaim_free_pages(engine)
    assert size() < grown / 10
    engine.dispose()


def _unreachable_engine() -> Engine:
    """An engine for a PostgreSQL server that is not there (nothing listens on the port)."""
    return make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/gone", tables=[])


def test_a_database_that_is_away_counts_as_unavailable_and_a_bad_statement_does_not(
        tmp_path: Path) -> None:
    with pytest.raises(OperationalError) as refused:
        _unreachable_engine()  # creating the tables connects
    assert is_unavailable(refused.value)
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", tables=[CounterRow])
    with transaction(engine) as session:
        session.add(CounterRow(id="c"))
    with pytest.raises(IntegrityError) as duplicate, transaction(engine) as session:
        session.add(CounterRow(id="c"))
    assert not is_unavailable(duplicate.value)
    # SQLite calls a bad statement an OperationalError too: a bug, not an outage.
    with pytest.raises(OperationalError) as bad, transaction(engine) as session:
        session.connection().exec_driver_sql("SELECT missing FROM test_runtime_counter")
    assert not is_unavailable(bad.value)
    assert not is_unavailable(ValueError("not a database error"))


def test_a_call_that_finds_the_database_away_answers_unavailable_not_internal() -> None:
    def handler(request: bytes, context: grpc.ServicerContext) -> bytes:
        # What a handler does while the database is down: connecting fails.
        with create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/gone"
                           ).connect():
            return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "test.Db", {"Get": grpc.unary_unary_rpc_method_handler(handler)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, \
                pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary("/test.Db/Get")(b"x", timeout=10)
    finally:
        server.stop(0)
    error = failed.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "DATABASE_UNAVAILABLE"
    assert "127.0.0.1" not in status.message  # the database's address stays in the log
