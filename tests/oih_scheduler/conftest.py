"""Scheduler tests: the scheduler's tables on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlmodel import SQLModel

from oih_scheduler.server import TABLES


@pytest.fixture
def tables() -> Sequence[type[SQLModel]]:
    return TABLES
