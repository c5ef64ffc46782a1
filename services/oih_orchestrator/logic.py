"""The orchestrator's core, free of gRPC: `Orchestrator` holds one shared `Context`
(`context.py`) and one object per concern. A map of the rooms:

- `deployments.py`: start and stop, intent then work (the event handlers and their tasks);
- `vetting.py`: whether a flow can run (first step, ids, components the driver can run,
  credentials);
- `broker_users.py`: one broker user per step and the URLs that carry its password;
- `teardown.py`: removing a deployment's workers, reports, users and queues;
- `reconcile.py`: making what runs agree with the deployments table (heal, finish, strays);
- `execute.py`: starting executions; `executions/`: the executions and dead-letter views.
The servicer converts with `convert.py` (workers, flow runtimes) and reads with
`runtime_view.py`, like the repositories' servicer/logic/convert.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from .amqp import Amqp
from .components import ComponentLookup
from .context import Context, ReportsSink
from .credentials import Resolve
from .deployments import Deployments
from .drivers import Driver
from .management import Management
from .reconcile import Reconciler
from .snapshots import SnapshotReader

__all__ = ["Orchestrator", "ReportsSink"]


class Orchestrator:
    def __init__(self, engine: Engine, driver: Driver, amqp: Amqp, management: Management,
                 components: ComponentLookup, *, worker_amqp_url: str,
                 resolve: Resolve | None = None,
                 start_timeout: float = 60.0, stop_timeout: float = 60.0,
                 task_threads: int = 8) -> None:
        self.context = Context(engine, driver, amqp, management, components,
                               worker_amqp_url=worker_amqp_url, resolve=resolve,
                               start_timeout=start_timeout, stop_timeout=stop_timeout,
                               task_threads=task_threads)
        self.deployments = Deployments(self.context)
        self.reconciler = Reconciler(self.context, self.deployments)
        # The entry points the event handlers, the servicer and the server call.
        self.start = self.deployments.start
        self.stop = self.deployments.stop
        self.failed_elsewhere = self.deployments.failed_elsewhere
        self.with_latest_snapshot = self.deployments.with_latest_snapshot
        self.reconcile = self.reconciler.reconcile

    @property
    def driver(self) -> Driver:
        return self.context.driver

    @property
    def management(self) -> Management:
        return self.context.management

    @property
    def vhost(self) -> str:
        return self.context.vhost

    def follow_reports(self, reports: ReportsSink) -> None:
        """Keep the executions view: follow running flows' reports, drain them at a stop."""
        self.context.reports = reports

    def read_snapshots(self, snapshots: SnapshotReader) -> None:
        """Give deployed (and restarted) workers their steps' latest snapshots."""
        self.context.snapshots = snapshots

    def close(self, timeout: float = 60.0) -> None:
        """Cancel starts in progress (their rows stay STARTING) and wait for running tasks."""
        self.context.tasks.close(timeout)
