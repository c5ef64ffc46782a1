"""Flows never hang in STARTING or STOPPING (OIH #486, #926, #1088): a flow that stays in a
transition longer than the timeout becomes FAILED with the reason, and `oih.flow.failed` tells
the rest of the platform. A lost or late orchestrator event therefore costs a timeout, not a
stuck flow; the user can start or stop a FAILED flow again.

Every replica runs a sweeper; the etag guard on each row means only one of them fails a flow.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, select

from oih_flows import lifecycle
from oih_flows.lifecycle import STARTING, TRANSITIONS
from oih_flows.models import FlowRow
from oih_runtime.background import Periodic
from oih_runtime.clock import aware, utcnow

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(seconds=120)


def fail_stuck_flows(engine: Engine, now: datetime,
                     timeout: timedelta = DEFAULT_TIMEOUT) -> list[str]:
    """Move every flow in STARTING or STOPPING since before `now - timeout` to FAILED.
    Returns the names of the flows it failed."""
    cutoff = now - timeout
    with Session(engine) as session:
        stuck = session.exec(
            select(FlowRow.id).where(col(FlowRow.state).in_(TRANSITIONS),
                                     col(FlowRow.state_time) < cutoff)
        ).all()
    failed = []
    for flow_id in stuck:
        # One transaction per flow: a flow that moves on meanwhile (its event arrived, or
        # another replica failed it) must not hold back the others.
        try:
            with Session(engine, expire_on_commit=False) as session:
                row = session.get(FlowRow, flow_id)
                if row is None or row.state not in TRANSITIONS or aware(row.state_time) >= cutoff:
                    continue
                goal = "ACTIVE" if row.state == STARTING else "INACTIVE"
                was = "STARTING" if row.state == STARTING else "STOPPING"
                seconds = int(timeout.total_seconds())
                reason = (f"stuck in {was}: the flow did not become {goal} within {seconds} s "
                          "(no answer from the orchestrator); start or stop it again")
                lifecycle.fail(session, row, reason, now)
                session.commit()
        except StaleDataError:
            continue
        failed.append(lifecycle.name(row))
        log.warning("flow transition timed out", extra={"flow": lifecycle.name(row),
                                                         "reason": reason})
    return failed


class Sweeper(Periodic):
    """Runs `fail_stuck_flows` every `interval` seconds (the first time after one interval);
    a database outage is logged and the next round sweeps again."""

    def __init__(self, engine: Engine, timeout: timedelta, interval: float) -> None:
        super().__init__(lambda: fail_stuck_flows(engine, utcnow(), timeout), interval,
                         "oih-flows-sweeper", at_once=False, stop_timeout=10.0)
        self.engine = engine
        self.timeout = timeout
