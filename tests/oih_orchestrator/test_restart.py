"""A restarted orchestrator takes over: it adopts workers that still run, starts the missing
ones again (with a fresh broker password), and removes what runs for flows that stopped."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from oih.orchestrator.v1 import orchestrator_pb2 as pb
from oih_orchestrator.management import Management
from oih_orchestrator.models import STOPPED, DeploymentRow
from oih_orchestrator.server import TABLES
from oih_runtime.db import make_engine
from oih_worker import topology
from tests.oih_orchestrator.conftest import StartOrchestrator
from tests.oih_orchestrator.support import sink_lines, three_step_flow, wait_for


def pids(workers: list[Any]) -> dict[str, int]:
    return {w.step_id: int(w.instance.removeprefix("pid:")) for w in workers}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_restart_adopts_restarts_missing_and_removes_strays(
        start_orchestrator: StartOrchestrator, builtins: dict[str, str], tmp_path: Path,
        management: Management, user_md: Any) -> None:
    exchange = f"test.oih.events.{uuid.uuid4().hex[:8]}"
    first = start_orchestrator(tmp_path, exchange, consumer="orchestrator-restart")
    kept, dropped = three_step_flow(builtins), three_step_flow(builtins)
    kept_id, dropped_id = kept.name.split("/")[1], dropped.name.split("/")[1]
    for flow in (kept, dropped):
        first.bus.starting(flow)
        assert first.bus.answer(flow).type == "oih.flow.started"
    kept_before = pids(first.driver.workers(kept_id))
    dropped_pids = pids(first.driver.workers(dropped_id))

    first.crash()
    # While it is down: a worker dies (nobody restarts it) ...
    os.kill(kept_before["sink"], signal.SIGKILL)
    wait_for(lambda: not alive(kept_before["sink"]), 10, "the worker to die")
    # ... and a flow is recorded as stopped although its workers were never removed.
    engine = make_engine(f"sqlite:///{tmp_path / 'orchestrator.db'}", tables=TABLES)
    with Session(engine) as session:
        row = session.get(DeploymentRow, dropped_id)
        assert row is not None
        row.state = STOPPED
        session.add(row)
        session.commit()
    engine.dispose()

    second = start_orchestrator(tmp_path, exchange, consumer="orchestrator-restart")

    def settled() -> bool:
        now = pids(second.driver.workers(kept_id))
        return (set(now) == {"start", "double", "sink"}
                and now["sink"] != kept_before["sink"]
                and dropped_id not in second.driver.flows())
    wait_for(settled, 30, "the reconciler to settle")
    after = pids(second.driver.workers(kept_id))
    assert after["start"] == kept_before["start"] and after["double"] == kept_before["double"]
    assert not any(alive(pid) for pid in dropped_pids.values())
    # The reconciler deletes users and queues right after the workers (asynchronously).
    wait_for(lambda: management.users(f"oih-flow-{dropped_id}.") == [] and
             management.queues("/", topology.exchange_name(dropped_id)) == [], 15,
             "the stray flow's users and queues to go")

    # The restarted sink logs in with its new password and the flow runs end to end.
    second.stub.StartExecution(pb.StartExecutionRequest(flow=kept.name), metadata=user_md)
    wait_for(lambda: sink_lines(tmp_path, kept_id), 30, "the sink")

    second.bus.stopping(kept)
    assert second.bus.answer(kept).type == "oih.flow.stopped"
    assert not any(alive(pid) for pid in after.values())


def test_stop_while_down_is_handled_after_restart(
        start_orchestrator: StartOrchestrator, builtins: dict[str, str], tmp_path: Path,
        management: Management) -> None:
    """The `oih.flow.stopping` waits in the orchestrator's durable queue meanwhile."""
    exchange = f"test.oih.events.{uuid.uuid4().hex[:8]}"
    first = start_orchestrator(tmp_path, exchange, consumer="orchestrator-restart-2")
    flow = three_step_flow(builtins)
    flow_id = flow.name.split("/")[1]
    first.bus.starting(flow)
    assert first.bus.answer(flow).type == "oih.flow.started"
    workers = pids(first.driver.workers(flow_id))
    first.crash()

    second = start_orchestrator(tmp_path, exchange, consumer="orchestrator-restart-2")
    second.bus.stopping(flow)
    assert second.bus.answer(flow).type == "oih.flow.stopped"
    assert not any(alive(pid) for pid in workers.values())
    assert management.queues("/", topology.exchange_name(flow_id)) == []


@pytest.mark.parametrize("step", ["start"])
def test_worker_adoption_checks_the_command_line(tmp_path: Path, step: str) -> None:
    """A pid file naming a process that is not this step's worker is not adopted."""
    from oih_orchestrator.local import LocalDriver

    folder = tmp_path / "workers" / "flowx"
    folder.mkdir(parents=True)
    (folder / f"{step}.json").write_text("{}")
    (folder / f"{step}.pid").write_text(str(os.getpid()))  # the test process: not a worker
    driver = LocalDriver(tmp_path)
    assert driver.workers("flowx") == []
    assert driver.flows() == {"flowx"}  # a leftover, to be removed by the reconciler
    driver.remove("flowx")
    assert driver.flows() == set()
