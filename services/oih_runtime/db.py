"""Database engine and sessions (SQLModel over SQLAlchemy).

SQLite in WAL mode by default, so a laptop runs the whole mesh without a database server;
`DATABASE_URL` points a service at PostgreSQL. Each service owns its own tables and file.

Statement parameters are kept out of error messages (`hide_parameters`): an unexpected database
error is logged with its trace, and its parameters may be password hashes or secrets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine


def make_engine(url: str) -> Engine:
    """Create an engine for `url` and create the tables of every imported SQLModel model."""
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
    SQLModel.metadata.create_all(engine)
    return engine


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
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any exception.

    On SQLite the transaction begins IMMEDIATE, taking the database's write lock before its first
    read: what it reads (a uniqueness check, a counter) cannot change before it writes, and
    concurrent writers wait for the lock (busy_timeout) instead of failing. (pysqlite would
    otherwise run the reads outside any transaction and begin only at the first write.) Keep slow
    work, such as password hashing or calls to other services, outside the transaction, and do
    not open a second one on the same engine inside it.
    """
    with Session(engine, expire_on_commit=False) as session:
        try:
            if engine.dialect.name == "sqlite":
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
