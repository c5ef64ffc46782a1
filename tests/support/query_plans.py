"""What the database plans to do with a query: EXPLAIN QUERY PLAN on SQLite, EXPLAIN on
PostgreSQL. Used to check that list queries and the outbox relay are served by an index, so
their cost follows the page (or the batch), not the table's size."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ClauseElement, Executable


class _Explain(Executable, ClauseElement):
    """`EXPLAIN …` around a SELECT, with the SELECT's parameters bound as usual."""

    inherit_cache = False

    def __init__(self, statement: Any, prefix: str) -> None:
        self.statement = statement
        self.prefix = prefix


@compiles(_Explain)
def _compile_explain(element: _Explain, compiler: Any, **kw: Any) -> str:
    return f"{element.prefix} {compiler.process(element.statement, **kw)}"


def plan(engine: Engine, statement: Any) -> str:
    """The plan of `statement` as text, one line per step. On PostgreSQL sequential scans and
    sorts are switched off for the question, so a plan that still sorts or scans has no index
    to use (the planner would otherwise prefer a scan of the small tables of a test)."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            rows = connection.execute(_Explain(statement, "EXPLAIN QUERY PLAN")).all()
            return "\n".join(str(row[-1]) for row in rows)
        connection.exec_driver_sql("SET enable_seqscan = off")
        connection.exec_driver_sql("SET enable_sort = off")
        rows = connection.execute(_Explain(statement, "EXPLAIN")).all()
        connection.rollback()
        return "\n".join(str(row[0]) for row in rows)


def assert_served_by_index(engine: Engine, statement: Any, index: str | None = None) -> str:
    """The statement reads through an index (`index` if named) and sorts nothing."""
    found = plan(engine, statement)
    _check(engine, found)
    if index is not None:
        assert index in found, found
    return found


def _check(engine: Engine, found: str) -> None:
    if engine.dialect.name == "sqlite":
        assert "USE TEMP B-TREE" not in found, found
        assert not any(line.startswith("SCAN") and " USING " not in line
                       for line in found.splitlines()), found
    else:
        assert "Sort" not in found, found
        assert "Seq Scan" not in found, found


@contextmanager
def captured_selects(engine: Engine, table: str) -> Iterator[list[tuple[str, Any]]]:
    """The SELECT statements reading FROM `table` that run on `engine` inside the block, with
    their parameters as sent to the driver (the real queries of a list, not a copy of them)."""
    found: list[tuple[str, Any]] = []

    def record(_connection: Any, _cursor: Any, statement: str, parameters: Any,
               _context: Any, _executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and re.search(
                rf"\bFROM {table}\b", statement):
            found.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield found
    finally:
        event.remove(engine, "before_cursor_execute", record)


def assert_statement_served_by_index(engine: Engine, statement: str, parameters: Any) -> str:
    """`assert_served_by_index` for a statement captured by `captured_selects`."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "sqlite":
            cursor.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
            found = "\n".join(str(row[-1]) for row in cursor.fetchall())
        else:
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("SET enable_sort = off")
            cursor.execute(f"EXPLAIN {statement}", parameters)
            found = "\n".join(str(row[0]) for row in cursor.fetchall())
            raw.rollback()
    finally:
        raw.close()
    _check(engine, found)
    return found
