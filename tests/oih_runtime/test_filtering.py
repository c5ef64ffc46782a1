"""AIP-160 list filters turned into SQL, run on real SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col, select

from oih_runtime import filtering
from oih_runtime.db import transaction


class NamedRow(SQLModel, table=True):
    __tablename__ = "test_runtime_named"
    id: int = Field(primary_key=True)
    display_name: str


@pytest.fixture
def tables() -> list[type[SQLModel]]:
    return [NamedRow]


@pytest.mark.parametrize(
    ("text", "expected"),
    [('display_name:"50%"', ["50% off"]), ("display_name:a_b", ["a_b"]),
     ("display_name:OFF", ["50% off", "500 off"])],
)
def test_contains_matches_percent_and_underscore_literally_and_ignores_case(
        engine: Engine, text: str, expected: list[str]) -> None:
    with transaction(engine) as session:
        for index, name in enumerate(["50% off", "500 off", "a_b", "axb"]):
            session.add(NamedRow(id=index, display_name=name))
    fields = {"display_name": lambda op, value: filtering.compare(
        col(NamedRow.display_name), op, value)}
    with Session(engine) as session:
        rows = session.exec(select(NamedRow).where(*filtering.conditions(text, fields))
                            .order_by(col(NamedRow.id))).all()
    assert [r.display_name for r in rows] == expected
