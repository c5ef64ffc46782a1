"""Snapshots tests: the service's tables on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlmodel import SQLModel

from oih_snapshots.server import TABLES


@pytest.fixture
def tables() -> Sequence[type[SQLModel]]:
    return TABLES
