"""Removing what a flow's deployment made: its workers, its last reports, its broker users
and (on a stop, or when they hold nothing) its queues.

Queues hold accepted messages, so only an explicit stop (or the stop of a flow this
orchestrator no longer runs: a stray) deletes them with what they hold. A failure — a start
that fails, a worker the driver gave up on, a flow failed elsewhere — removes the workers and
broker users but keeps queues that hold messages, retries or dead letters (empty ones go);
starting the flow again consumes them, stopping it discards them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from oih_dataplane import topology
from oih_dataplane.spec import StepSpec

from .context import Context
from .management import user_name
from .models import DeploymentRow

log = logging.getLogger(__name__)


def teardown(ctx: Context, flow_id: str, steps: Iterable[str], *,
             row: DeploymentRow | None = None, tenant: str = "", discard: bool = True) -> int:
    """Workers first (SIGTERM: they finish, ack and send their last reports), then the
    flow's reports queue is merged into the executions view, then the users, then the
    queues: with `discard` (a stop) whatever they hold, else only if they hold nothing.
    Returns how many messages the deleted queues still held. Each part is idempotent, so a
    teardown interrupted by a crash can simply run again."""
    steps = sorted(set(steps))
    ctx.driver.remove(flow_id)
    deadline = time.monotonic() + ctx.stop_timeout
    while ctx.driver.workers(flow_id) and time.monotonic() < deadline:
        time.sleep(0.2)  # e.g. pods in their grace period
    if ctx.reports is not None:
        try:
            ctx.reports.drain(flow_id, tenant=row.tenant if row is not None else tenant,
                              specs=[StepSpec.from_dict(raw) for raw in row.specs]
                              if row is not None else None)
        except Exception:  # reports are a view: never let them block a stop
            log.exception("could not merge the last reports", extra={"flow_id": flow_id})
    # By name (a missing user is fine): listing the broker's users costs as much as there
    # are users and fails while other stops delete theirs (management.py). A user of a step
    # known to neither the row nor the flow is a stray; the reconciler finds those.
    for user in sorted({user_name(flow_id, step) for step in steps}
                       | set((row.broker_users or {}).values() if row is not None else ())):
        ctx.management.delete_user(user)
    if not steps:
        return 0
    discarded = queued(ctx, flow_id, steps)
    if discarded and not discard:
        log.warning("keeping the flow's queues: they hold messages",
                    extra={"flow_id": flow_id, "messages": discarded})
        return 0
    ctx.amqp.delete_flow(flow_id, steps)
    if discarded:
        log.warning("stop discarded queued messages",
                    extra={"flow_id": flow_id, "messages": discarded})
    return discarded


def queued(ctx: Context, flow_id: str, steps: Iterable[str]) -> int:
    """Messages waiting in the flow's step queues (inputs, retries, dead letters)."""
    total = 0
    for step_id in steps:
        queues = [topology.step_queue(flow_id, step_id), topology.dead_queue(flow_id, step_id),
                  *(topology.retry_queue(flow_id, step_id, level)
                    for level in range(1, topology.MAX_RETRY_LEVELS + 1))]
        for queue in queues:
            count = ctx.amqp.count(queue)
            total += count.messages if count is not None else 0
    return total
