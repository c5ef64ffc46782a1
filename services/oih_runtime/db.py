"""Database engine and sessions (SQLModel over SQLAlchemy).

SQLite in WAL mode by default, so a laptop runs the whole mesh without a database server;
`DATABASE_URL` points a service at PostgreSQL. Each service owns its own tables and file, and
names them when it makes its engine: a process that imports two services' models (the test
session, `oih up`) creates no foreign tables in either database.

Statement parameters are kept out of error messages (`hide_parameters`): an unexpected database
error is logged with its trace, and its parameters may be password hashes or secrets.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine


def make_engine(url: str, *, tables: Iterable[type[SQLModel]]) -> Engine:
    """Create an engine for `url` and the `tables` (models) that do not exist yet."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            # gRPC handlers run on a thread pool; SQLite's default forbids sharing connections.
            connect_args={"check_same_thread": False, "timeout": 30},
            hide_parameters=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                               hide_parameters=True)
    create_tables(engine, tables)
    return engine


def create_tables(engine: Engine, tables: Iterable[type[SQLModel]]) -> None:
    """Create the tables of `tables` that do not exist yet (existing ones are not altered)."""
    metadata = SQLModel.metadata
    metadata.create_all(engine, tables=[metadata.tables[str(model.__tablename__)]
                                        for model in tables])


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer; NORMAL sync is durable across process
    # crashes (only an OS crash may lose the last commits), which is what WAL is designed for.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@contextmanager
def transaction(engine: Engine, *, lock: bool = False) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any exception.

    On SQLite, pysqlite runs a transaction's reads outside it and begins only at the first
    write: a read-then-write (a counter, a check before an insert) can lose a concurrent update.
    `lock=True` begins IMMEDIATE instead, taking the database's write lock before the first
    read, so what the transaction reads cannot change before it writes. Keep slow work (password
    hashing, calls to other services) out of such a transaction, and open no other transaction
    on the same engine inside it: that one would wait for the lock its own thread holds. On
    PostgreSQL `lock` changes nothing: use `SELECT … FOR UPDATE` or a unique constraint there.
    """
    with Session(engine, expire_on_commit=False) as session:
        try:
            if lock and engine.dialect.name == "sqlite":
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
