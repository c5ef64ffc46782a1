"""Handlers of the events the orchestrator consumes, as `(session, event, payload)` functions
bound to one Orchestrator. The bus runs each in a transaction that also records the event id,
so a redelivered event is a no-op, and the events a handler owes commit with its state.

Starts and stops only record their intent here (the deployment row, STARTING or STOPPING) and
leave the work to the orchestrator's per-flow background tasks, queued once that transaction
committed: a flow whose workers take long to come up holds up no other event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from sqlmodel import Session

from oih.events.v1 import event_pb2, orchestrator_pb2
from oih.events.v1 import flows_pb2 as flow_events
from oih_runtime import names
from oih_runtime.bus import Consumer, PermanentError
from oih_runtime.errors import DomainError

from . import execute
from .context import SOURCE
from .logic import Orchestrator

Event = event_pb2.Event


def _flow_id(name: str) -> str:
    """The flow id of `flows/{id}`, checked like the topology does: the id becomes a folder,
    queue and user name, so `..` or a dot would reach beyond the flow's own."""
    if not names.is_name(name, "flows"):
        raise PermanentError(f"not a flow name: {name!r}")  # retrying cannot fix it
    return name.removeprefix("flows/")


def register(consumer: Consumer, orchestrator: Orchestrator,
             starter: execute.Starter) -> None:
    def starting(session: Session, event: Event, payload: flow_events.FlowStarting) -> None:
        _flow_id(payload.flow.name)
        orchestrator.start(session, payload.flow, payload.started_by)

    def stopping(session: Session, event: Event, payload: flow_events.FlowStopping) -> None:
        _flow_id(payload.flow.name)
        orchestrator.stop(session, payload.flow)

    def failed(session: Session, event: Event, payload: orchestrator_pb2.FlowFailed) -> None:
        if event.source == SOURCE:
            return  # our own: we cleaned up before we sent it
        orchestrator.failed_elsewhere(session, _flow_id(payload.flow), payload.reason)

    def execute_flow(session: Session, event: Event, payload: flow_events.FlowExecute) -> None:
        # The legacy trigger path (triggers now call StartExecution, which answers only after
        # the confirm). Still honoured for events emitted before an upgrade.
        flow_id = _flow_id(payload.flow)
        trigger = execute.Trigger(
            flow_id, json_format.MessageToDict(payload.data),
            json_format.MessageToDict(payload.metadata), execution_id=payload.execution_id,
            source=payload.source if payload.source in execute.SOURCES else "api",
            reply_to=payload.reply_to)
        try:
            starter.start_execution(None, trigger)
        except DomainError as error:
            # Not ACTIVE here (stopped meanwhile) or unknown: retrying will not change that.
            # Dead-lettered, never dropped silently: `oih events dead-letters orchestrator`
            # shows it with the reason, and it can be replayed once the flow runs.
            raise PermanentError(f"execution {payload.execution_id} of {payload.flow} not "
                                 f"started: {error.message}") from None

    handlers: dict[str, tuple[Callable[[Session, Event, Any], None], type[Any]]] = {
        "oih.flow.starting": (starting, flow_events.FlowStarting),
        "oih.flow.stopping": (stopping, flow_events.FlowStopping),
        "oih.flow.failed": (failed, orchestrator_pb2.FlowFailed),
        "oih.flow.execute": (execute_flow, flow_events.FlowExecute),
    }
    for event_type, (handler, payload_type) in handlers.items():
        consumer.on(event_type, handler, payload_type)
