"""What a trigger needs to know about a flow's deployment (tenant, state, entry step, version),
kept in memory between writes of the deployments table.

Why: every StartExecution read its deployment row, one query per trigger (py-spy: about a tenth
of the orchestrator's time under 16 concurrent callers, on SQLite more while the executions
view writes). The orchestrator runs as one replica and is the only writer of its deployments
table, always through the ORM in its own process, so its writes can invalidate the cache:

- a flush that inserts, updates or deletes a `DeploymentRow` marks its session and advances a
  process-wide generation; the commit or rollback of a marked session advances it again;
- an entry remembers the generation read *before* its query, and is used only while that
  generation is current. A write committed while the query ran therefore invalidates the
  entry too, so a flow that was just stopped is never taken for ACTIVE (it answers
  FAILED_PRECONDITION, as it did with a query per call).

A bulk `update()`/`delete()` statement on the table would bypass these events; there is none
(keep it so, or call `invalidate()`).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import object_session
from sqlmodel import Session, select

from .models import DeploymentRow

_MARK = "oih_deployments_changed"
_counter = itertools.count(1)
_generation = 0


def generation() -> int:
    return _generation


def invalidate() -> None:
    global _generation
    _generation = next(_counter)  # itertools.count is atomic under the GIL


def _written(_mapper: Any, _connection: Any, target: DeploymentRow) -> None:
    session = object_session(target)
    if session is not None:
        session.info[_MARK] = True
    invalidate()


def _ended(session: OrmSession, *_args: Any) -> None:
    if session.info.pop(_MARK, False):
        invalidate()


for _name in ("after_insert", "after_update", "after_delete"):
    event.listen(DeploymentRow, _name, _written)
event.listen(OrmSession, "after_commit", _ended)
event.listen(OrmSession, "after_soft_rollback", _ended)


@dataclass(frozen=True)
class Deployment:
    tenant: str
    state: str
    entry_step: str
    flow_version: int


class DeploymentCache:
    def __init__(self, engine: Engine, max_entries: int = 10_000) -> None:
        self.engine = engine
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[int, Deployment | None]] = {}

    def get(self, flow_id: str) -> Deployment | None:
        """The flow's deployment as committed now; None when there is none."""
        current = _generation
        with self._lock:
            hit = self._entries.get(flow_id)
        if hit is not None and hit[0] == current:
            return hit[1]
        with Session(self.engine) as session:
            # The four columns it needs, not the row with its step specs (JSON).
            found = session.exec(select(
                DeploymentRow.tenant, DeploymentRow.state, DeploymentRow.entry_step,
                DeploymentRow.flow_version).where(DeploymentRow.flow_id == flow_id)).first()
        deployment = Deployment(*found) if found is not None else None
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # unknown ids must not grow it without bound
            self._entries[flow_id] = (current, deployment)
        return deployment
