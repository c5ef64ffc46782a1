"""The RabbitMQ topology of one flow: names, declare/delete helpers, broker-user permissions.

Used by the worker (names, optional self-declaration in development) and by the orchestrator,
which declares a flow's topology before it starts the workers and deletes it after stopping them.

Per flow `F` (all durable, classic queues: one node, so quorum queues buy nothing yet):
- exchange `oih.flow.F` (topic); every route below goes through it;
- per step `S`:
  - `oih.flow.F.S`          ← `step.S.input`   the step's input (x-dead-letter → `step.S.dead`,
                                               so even a message rejected by a broker-side limit
                                               ends in a queue that exists);
  - `oih.flow.F.S.retry.N`  ← `step.S.retry.N` delay queue of retry level N (1..levels); a
                                               message waits its per-message `expiration`, then
                                               RabbitMQ dead-letters it to `step.S.input`;
  - `oih.flow.F.S.dead`     ← `step.S.dead`    dead letters (ErrorEnvelope JSON), kept for
                                               inspection and replay;
- `oih.flow.F.reports`      ← `reports`        StepReportBatch JSON for the orchestrator;
- `oih.snapshots`           ← `snapshot`       step snapshots for the Snapshots service: one
                                               durable queue for the whole platform (suffixed
                                               by the bus namespace), bound to every flow's
                                               exchange. It outlives the flows, so a snapshot a
                                               worker emits just before its flow stops is not
                                               deleted with the flow; the exchange it came
                                               through tells the service which flow wrote it.

Why one delay queue per retry level, with per-message expiration: RabbitMQ expires messages
only at the head of a queue, so a message with a long TTL blocks every shorter one behind it
(head-of-line blocking). One queue for all retries would hold a 1 s retry behind a 60 s one.
Within one level every message has the same base delay and differs only by the jitter, so
the worst extra wait is the jitter spread of that level. Levels beyond MAX_RETRY_LEVELS share
the last queue; their delays only grow (until max_delay), so a later message is never held
back by more than its own delay. Delay queues, not sleeps: a sleeping worker would hold its
prefetch slot and lose the wait (and the message's place) on a crash.

Step ids named `reports` or `snapshots` would collide with the flow's own queues (and the
step's read permission would then cover them), so they are rejected here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from oih_runtime import names

RESERVED_STEP_IDS = frozenset({"reports", "snapshots"})
_STEP_ID = re.compile(r"^[A-Za-z0-9_-]{1,30}$")
# Delete this many retry levels when the actual number is unknown (deleting a missing queue is
# a no-op in RabbitMQ).
MAX_RETRY_LEVELS = 8


def check_ids(flow_id: str, step_id: str | None = None) -> None:
    if not names.is_id(flow_id):
        raise ValueError(f"flow id {flow_id!r} is not usable in queue names")
    if step_id is not None:
        if not _STEP_ID.match(step_id):
            raise ValueError(f"step id {step_id!r} must be 1-30 characters of [A-Za-z0-9_-]")
        if step_id in RESERVED_STEP_IDS:
            raise ValueError(f"step id {step_id!r} is reserved (it names a flow queue)")


# --- names ---------------------------------------------------------------------------------

def exchange_name(flow_id: str) -> str:
    return f"oih.flow.{flow_id}"


def step_queue(flow_id: str, step_id: str) -> str:
    return f"oih.flow.{flow_id}.{step_id}"


def input_key(step_id: str) -> str:
    return f"step.{step_id}.input"


def retry_queue(flow_id: str, step_id: str, level: int) -> str:
    return f"oih.flow.{flow_id}.{step_id}.retry.{level}"


def retry_key(step_id: str, level: int) -> str:
    return f"step.{step_id}.retry.{level}"


def dead_queue(flow_id: str, step_id: str) -> str:
    return f"oih.flow.{flow_id}.{step_id}.dead"


def dead_key(step_id: str) -> str:
    return f"step.{step_id}.dead"


def reports_queue(flow_id: str) -> str:
    return f"oih.flow.{flow_id}.reports"


REPORTS_KEY = "reports"


def snapshots_queue(namespace: str = "") -> str:
    """The platform's snapshots queue (see the module docstring)."""
    return f"oih.snapshots.{namespace}" if namespace else "oih.snapshots"


def flow_of_exchange(exchange: str) -> str | None:
    """`oih.flow.F` → `F` (None for any other exchange)."""
    flow_id = exchange.removeprefix("oih.flow.")
    return flow_id if flow_id != exchange and names.is_id(flow_id) else None


SNAPSHOT_KEY = "snapshot"


# --- permissions of a step's broker user ----------------------------------------------------

def step_permissions(flow_id: str, step_id: str) -> dict[str, str]:
    """RabbitMQ vhost permission regexes for the user of one step's worker: it declares nothing,
    publishes only to its flow's exchange (successors, its retries and dead letters, reports,
    snapshots) and reads only its own input queue."""
    check_ids(flow_id, step_id)
    return {
        "configure": "^$",
        "write": f"^{re.escape(exchange_name(flow_id))}$",
        "read": f"^{re.escape(step_queue(flow_id, step_id))}$",
    }


# --- declare / delete (pika BlockingChannel) ------------------------------------------------

def declare_step(channel: Any, flow_id: str, step_id: str, retry_levels: int) -> None:
    """Declare one step's queues and bindings (the flow exchange must exist)."""
    check_ids(flow_id, step_id)
    exchange = exchange_name(flow_id)
    queue = step_queue(flow_id, step_id)
    channel.queue_declare(queue, durable=True, arguments={
        "x-dead-letter-exchange": exchange,
        "x-dead-letter-routing-key": dead_key(step_id),
    })
    channel.queue_bind(queue, exchange, routing_key=input_key(step_id))
    for level in range(1, retry_levels + 1):
        delay_queue = retry_queue(flow_id, step_id, level)
        channel.queue_declare(delay_queue, durable=True, arguments={
            "x-dead-letter-exchange": exchange,
            "x-dead-letter-routing-key": input_key(step_id),
        })
        channel.queue_bind(delay_queue, exchange, routing_key=retry_key(step_id, level))
    channel.queue_declare(dead_queue(flow_id, step_id), durable=True)
    channel.queue_bind(dead_queue(flow_id, step_id), exchange, routing_key=dead_key(step_id))


def declare_flow(channel: Any, flow_id: str, steps: Mapping[str, int],
                 snapshots: str = "") -> None:
    """Declare a flow's exchange, its reports queue, its binding to the platform's snapshots
    queue (`snapshots`, default `snapshots_queue()`), and every step.

    `steps` maps step id → number of retry levels (`RetrySpec.retry_levels`).
    """
    snapshots = snapshots or snapshots_queue()
    check_ids(flow_id)
    for step_id in steps:
        check_ids(flow_id, step_id)
    exchange = exchange_name(flow_id)
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    channel.queue_declare(reports_queue(flow_id), durable=True)
    channel.queue_bind(reports_queue(flow_id), exchange, routing_key=REPORTS_KEY)
    channel.queue_declare(snapshots, durable=True)
    channel.queue_bind(snapshots, exchange, routing_key=SNAPSHOT_KEY)
    for step_id, levels in steps.items():
        declare_step(channel, flow_id, step_id, levels)


def delete_flow(channel: Any, flow_id: str, step_ids: Iterable[str],
                retry_levels: int = MAX_RETRY_LEVELS) -> None:
    """Delete everything `declare_flow` made for the flow, messages included (dead letters
    too); the platform's snapshots queue stays."""
    for step_id in step_ids:
        channel.queue_delete(step_queue(flow_id, step_id))
        for level in range(1, retry_levels + 1):
            channel.queue_delete(retry_queue(flow_id, step_id, level))
        channel.queue_delete(dead_queue(flow_id, step_id))
    channel.queue_delete(reports_queue(flow_id))
    # The shared snapshots queue stays (deleting the exchange removes its binding); this is
    # the per-flow snapshots queue of earlier versions, which nobody consumed.
    channel.queue_delete(f"oih.flow.{flow_id}.snapshots")
    channel.exchange_delete(exchange_name(flow_id))
