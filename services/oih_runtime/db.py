"""Database engine and sessions (SQLModel over SQLAlchemy).

SQLite in WAL mode by default, so a laptop runs the whole mesh without a database server;
`DATABASE_URL` points a service at PostgreSQL. Each service owns its own tables and file, and
names them when it makes its engine: a process that imports two services' models (the test
session, `oih up`) creates no foreign tables in either database.

Statement parameters are kept out of error messages (`hide_parameters`): an unexpected database
error is logged with its trace, and its parameters may be password hashes or secrets.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel, create_engine

#: The PostgreSQL driver this platform installs (psycopg2-binary). SQLAlchemy maps a plain
#: `postgresql://` URL to psycopg 3 since 2.1, which is not installed.
POSTGRESQL_DRIVER = "postgresql+psycopg2"


def normalise_url(url: str) -> str:
    """`postgresql://…` and `postgres://…` (as deploy manifests and hosting providers write
    them) → the installed driver; every other URL, and one naming a driver, unchanged."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername=POSTGRESQL_DRIVER).render_as_string(hide_password=False)
    return url


#: The longest a background loop waits between tries while the database is away (its wait
#: doubles up to this): short enough that work resumes soon after the database is back.
UNAVAILABLE_WAIT_MAX = 10.0


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database cannot be used right now, not that the statement is
    wrong: the server is down or restarting, a connection broke (a crash, a failover, a
    network cut), the pool has no connection to give within its timeout, or SQLite's file is
    locked beyond the busy timeout. The same call may succeed later, so a request answers
    UNAVAILABLE (503, retryable) and a background loop tries again; `pool_pre_ping` and the
    pool's invalidation on disconnect give the next attempt a fresh connection."""
    if isinstance(error, exc.TimeoutError):
        return True
    # psycopg2 raises InterfaceError ("connection already closed") for a socket the server
    # dropped; SQLAlchemy flags every such disconnect.
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if not isinstance(error, exc.OperationalError):
        return False
    if isinstance(error.orig, sqlite3.Error):
        # SQLite raises OperationalError for bugs too (a syntax error, a missing column):
        # those must fail loudly, not wait forever. Only a lock held too long is transient.
        return "locked" in str(error.orig) or "busy" in str(error.orig)
    return True  # PostgreSQL: cannot connect, the server is shutting down or starting up


def make_engine(url: str, *, tables: Iterable[type[SQLModel]]) -> Engine:
    """Create an engine for `url` and the `tables` (models) that do not exist yet."""
    url = normalise_url(url)
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
        _use_incremental_vacuum(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                               hide_parameters=True)
    create_tables(engine, tables)
    return engine


def create_tables(engine: Engine, tables: Iterable[type[SQLModel]]) -> None:
    """Create the tables of `tables` that do not exist yet (existing ones are not altered),
    and every index of theirs that is missing: `create_all` skips a table that exists, and
    with it each index added to the model since, so an existing database also gets the
    indexes its list queries rely on (tests/oih_runtime/test_query_plans.py checks the plans)."""
    metadata = SQLModel.metadata
    chosen = [metadata.tables[str(model.__tablename__)] for model in tables]
    metadata.create_all(engine, tables=chosen)
    with engine.begin() as connection:
        for table in chosen:
            for index in table.indexes:
                index.create(connection, checkfirst=True)


def _use_incremental_vacuum(engine: Engine) -> None:
    """Let the file shrink: SQLite keeps the pages of deleted rows for reuse but never gives
    them back unless `auto_vacuum` is on. A new file gets INCREMENTAL before its first table;
    an existing file is rewritten once (VACUUM) to switch it. `reclaim_free_pages` then returns
    the free pages from time to time (the outbox relay calls it after its purge)."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if cursor.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
            cursor.execute(f"PRAGMA auto_vacuum={_INCREMENTAL}")
            cursor.execute("VACUUM")  # only a rewrite applies the mode to an existing file
        cursor.close()
    finally:
        raw.close()


def reclaim_free_pages(engine: Engine) -> None:
    """Return SQLite's free pages (left by deleted rows) to the file system; nothing to do on
    PostgreSQL, whose autovacuum makes dead rows' space reusable."""
    if engine.dialect.name != "sqlite":
        return
    raw = engine.raw_connection()
    try:
        # executescript runs the pragma to its end; execute() would step it once, and each
        # step frees one page.
        raw.cursor().executescript("PRAGMA incremental_vacuum")
    finally:
        raw.close()


_INCREMENTAL = 2  # PRAGMA auto_vacuum: 0 NONE, 1 FULL, 2 INCREMENTAL


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer; NORMAL sync is durable across process
    # crashes (only an OS crash may lose the last commits), which is what WAL is designed for.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # The WAL is reused after each checkpoint; this also truncates it after a large burst.
    cursor.execute("PRAGMA journal_size_limit=67108864")
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
