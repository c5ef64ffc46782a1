"""Starting an execution: the first message of a run, published to the flow's entry step.

Shared by `oih.flow.execute` (the Flow Repository's `:execute`, the scheduler, webhooks) and the
StartExecution RPC. The message is the JSON form of `oih.component.v1.Message` with the
`oih-*` headers the worker reads (built by oih_worker.envelope, so both sides agree).

Exactly-once starts, as far as a caller can tell: the execution id is recorded in the same
transaction that publishes (with a broker confirm, before the commit), so a repeated request
with the same id publishes nothing. If the commit fails after the confirm, a retry publishes
again, but with the same message id (derived from the execution id), so the duplicate is
recognisable downstream.
"""

from __future__ import annotations

import importlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from oih_runtime import names
from oih_runtime.clock import aware
from oih_runtime.db import transaction
from oih_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from oih_runtime.principal import Principal
from oih_sdk import Message
from oih_worker import envelope, topology

from .amqp import Amqp
from .models import ACTIVE, DeploymentRow, ExecutionStartRow


@dataclass(frozen=True)
class Started:
    flow_id: str
    execution_id: str
    source: str
    flow_version: int
    create_time: datetime
    #: False when the execution existed already (nothing was published).
    new: bool


def executions_package() -> Any:
    """`oih_orchestrator.executions` (the executions and dead-letter views), or None while it
    does not exist. Imported lazily: it is developed separately and optional to this core."""
    name = "oih_orchestrator.executions"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise  # the package exists but is broken: say so
        return None


def message_id(flow_id: str, execution_id: str) -> str:
    return str(uuid.uuid5(envelope.ID_NAMESPACE, f"execution/{flow_id}/{execution_id}"))


def visible_deployment(session: Session, caller: Principal | None, flow_id: str
                       ) -> DeploymentRow:
    """The flow's deployment, NOT_FOUND when there is none or the caller may not see it."""
    row = session.get(DeploymentRow, flow_id)
    if row is None or (caller is not None and not caller.sees_tenant(row.tenant)):
        raise NotFound("flow", f"flows/{flow_id}")
    return row


def start_execution(engine: Engine, amqp: Amqp, flow_id: str, *, caller: Principal | None,
                    data: dict[str, Any], metadata: dict[str, Any] | None = None,
                    execution_id: str = "", source: str = "api", reply_to: str = "",
                    session: Session | None = None) -> Started:
    """Publish the first message of a run (or find the run with that id). `caller` None means
    a trusted event (its tenant was checked by the emitter). Uses `session` when given (an
    event handler's transaction), else its own."""
    if execution_id and not names.is_id(execution_id):
        raise InvalidArgument.field("execution_id", names.ID_RULE)
    execution_id = execution_id or str(uuid.uuid4())
    if session is None:
        with transaction(engine) as own:
            return _start(own, amqp, flow_id, caller, data, metadata or {}, execution_id,
                          source, reply_to)
    return _start(session, amqp, flow_id, caller, data, metadata or {}, execution_id, source,
                  reply_to)


def _start(session: Session, amqp: Amqp, flow_id: str, caller: Principal | None,
           data: dict[str, Any], metadata: dict[str, Any], execution_id: str, source: str,
           reply_to: str) -> Started:
    row = visible_deployment(session, caller, flow_id)
    known = session.get(ExecutionStartRow, (flow_id, execution_id))
    if known is not None:
        return Started(flow_id, execution_id, known.source, known.flow_version,
                       aware(known.create_time), new=False)
    if row.state != ACTIVE or not row.entry_step:
        raise FailedPrecondition(f"flow flows/{flow_id} is not running here (it is "
                                 f"{row.state.lower()})", reason="FLOW_NOT_ACTIVE",
                                 subject=f"flows/{flow_id}")
    start = ExecutionStartRow(flow_id=flow_id, execution_id=execution_id, tenant=row.tenant,
                              source=source, flow_version=row.flow_version)
    session.add(start)
    session.flush()  # a concurrent start of the same id fails here, before publishing
    views = executions_package()
    if views is not None:
        # The executions view learns the run's source and version in the same transaction.
        views.record_start(session, tenant=row.tenant, flow_id=flow_id,
                           execution_id=execution_id, source=source,
                           flow_version=row.flow_version)
    message = Message(data=data, metadata=metadata, id=message_id(flow_id, execution_id),
                      flow_id=flow_id, step_id=row.entry_step, execution_id=execution_id)
    properties = envelope.properties_of(message, reply_to=reply_to or None,
                                        correlation_id=execution_id if reply_to else None)
    amqp.publish(topology.exchange_name(flow_id), topology.input_key(row.entry_step),
                 envelope.encode(message), properties)
    return Started(flow_id, execution_id, source, row.flow_version, aware(start.create_time),
                   new=True)
