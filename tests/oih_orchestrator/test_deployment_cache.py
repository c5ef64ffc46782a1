"""The triggers' deployment cache: a write of the deployments table is seen at once (a stopped
flow is never taken for ACTIVE), also when it commits while a read is in flight."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session

from oih_orchestrator import deployment_cache
from oih_orchestrator.deployment_cache import DeploymentCache
from oih_orchestrator.models import TABLES, DeploymentRow
from oih_runtime.db import make_engine, transaction


def _engine(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'orchestrator.db'}", tables=TABLES)


def test_a_write_is_seen_by_the_next_trigger(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    cache = DeploymentCache(engine)
    assert cache.get("f1") is None
    with transaction(engine) as session:
        session.add(DeploymentRow(flow_id="f1", tenant="t", state="ACTIVE", entry_step="a",
                                  flow_version=3))
    found = cache.get("f1")
    assert found is not None and (found.state, found.entry_step, found.flow_version) == (
        "ACTIVE", "a", 3)
    with transaction(engine) as session:
        row = session.get(DeploymentRow, "f1")
        assert row is not None
        row.state = "STOPPING"
        session.add(row)
    found = cache.get("f1")
    assert found is not None and found.state == "STOPPING"
    with transaction(engine) as session:
        gone = session.get(DeploymentRow, "f1")
        session.delete(gone)
    assert cache.get("f1") is None


def test_an_entry_read_before_a_commit_is_not_used_after_it(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    with transaction(engine) as session:
        session.add(DeploymentRow(flow_id="f1", tenant="t", state="ACTIVE", entry_step="a"))
    cache = DeploymentCache(engine)
    # A writer has flushed (not committed) its change while a trigger reads the old state.
    writer = Session(engine)
    row = writer.get(DeploymentRow, "f1")
    assert row is not None
    row.state = "STOPPING"
    writer.add(row)
    writer.flush()
    before = deployment_cache.generation()
    seen = cache.get("f1")
    assert seen is not None and seen.state == "ACTIVE"  # the committed state, still
    writer.commit()
    writer.close()
    assert deployment_cache.generation() != before
    seen = cache.get("f1")
    assert seen is not None and seen.state == "STOPPING"
