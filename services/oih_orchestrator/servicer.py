"""The OrchestratorService servicer: thin, converts protos and calls the logic.

Access rules (tokens, permissions) are declared in the contract and enforced by the shared
interceptors; tenant isolation is enforced here: another tenant's flow answers NOT_FOUND.

The executions and dead-letter RPCs are plain functions of `oih_orchestrator.executions`; this
servicer tells them what they need about flows (tenant, running steps) from the deployments
table.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pika.exceptions
from google.protobuf import empty_pb2, json_format
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih.orchestrator.v1 import orchestrator_pb2 as pb
from oih.orchestrator.v1 import orchestrator_pb2_grpc
from oih_runtime import names, principal
from oih_runtime.bus.pipelined import NotConfirmed
from oih_runtime.bus.publisher import PublisherError
from oih_runtime.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from oih_runtime.jsontext import parse_object

from . import execute, executions, runtime_view
from .amqp import Amqp
from .logic import Orchestrator
from .models import RUNNING_STATES, STOPPING, DeploymentRow

Context = grpc.ServicerContext


@dataclass(frozen=True)
class ServiceContext:
    """What the executions functions get: the database, the broker, the orchestrator."""

    engine: Engine
    amqp: Amqp
    orchestrator: Orchestrator
    starter: execute.Starter


def _started_proto(started: execute.Started) -> pb.Execution:
    """The execution as far as it is known at its start (its record is written in a moment)."""
    flow = f"flows/{started.flow_id}"
    execution = pb.Execution(name=f"{flow}/executions/{started.execution_id}", flow=flow,
                             state=pb.Execution.STATE_RUNNING, source=started.source,
                             flow_version=started.flow_version)
    execution.create_time.FromDatetime(started.create_time)
    execution.update_time.FromDatetime(started.create_time)
    return execution


def graph_order(steps: list[tuple[str, list[str]]]) -> list[str]:
    """Kahn's topological order of (step, targets), stable in the given order."""
    incoming = {step: 0 for step, _ in steps}
    for _, targets in steps:
        for target in targets:
            if target in incoming:
                incoming[target] += 1
    successors = dict(steps)
    ready = [step for step, _ in steps if incoming[step] == 0]
    order: list[str] = []
    while ready:
        step = ready.pop(0)
        order.append(step)
        for target in successors.get(step, []):
            if target in incoming:
                incoming[target] -= 1
                if incoming[target] == 0:
                    ready.append(target)
    return order


def _is_platform_service(caller: principal.Principal) -> bool:
    return caller.typ == "service" and caller.is_platform_admin


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, context: ServiceContext) -> None:
        self.context = context

    def GetFlowRuntime(self, request: pb.GetFlowRuntimeRequest, context: Context
                       ) -> pb.FlowRuntime:
        flow_id = names.parse("flows/{flow}/runtime", request.name, "name")[0]
        orchestrator = self.context.orchestrator
        with Session(self.context.engine) as session:
            row = execute.visible_deployment(session, principal.current(), flow_id)
        if row.state not in (*RUNNING_STATES, STOPPING):
            raise NotFound("flow runtime", request.name)
        try:
            return runtime_view.flow_runtime(row, orchestrator.driver, self.context.amqp,
                                             orchestrator.management, orchestrator.vhost)
        except pika.exceptions.AMQPError as error:
            raise Unavailable(f"the broker did not answer: {error!r}", reason="BROKER_UNAVAILABLE") from None

    def StartExecution(self, request: pb.StartExecutionRequest, context: Context
                       ) -> pb.Execution:
        flow_id = names.resource_id(request.flow, "flows", "flow")
        caller = principal.current()
        source = request.source or "api"
        if (source != "api" or request.reply_to) and not _is_platform_service(caller):
            # A tenant cannot pass its runs off as the scheduler's, nor aim replies anywhere.
            raise PermissionDenied("only platform services may set source or reply_to",
                                   reason="PLATFORM_ONLY")
        data = (parse_object(request.data_json, "data_json") if request.data_json
                else json_format.MessageToDict(request.data))
        metadata = (parse_object(request.metadata_json, "metadata_json")
                    if request.metadata_json else {})
        if request.max_queued_messages < 0:
            raise InvalidArgument.field("max_queued_messages", "must not be negative")
        trigger = execute.Trigger(flow_id, data, metadata, execution_id=request.execution_id,
                                  source=source, reply_to=request.reply_to,
                                  max_queued_messages=request.max_queued_messages)
        try:
            started = self.context.starter.start_execution(caller, trigger)
        except (PublisherError, NotConfirmed, TimeoutError, pika.exceptions.AMQPError) as error:
            raise Unavailable(f"the broker did not confirm the message: {error!r}",
                              reason="BROKER_UNAVAILABLE") from None
        context.send_initial_metadata(
            (("x-oih-execution-created", "true" if started.new else "false"),))
        return _started_proto(started)

    # --- delegated to oih_orchestrator.executions ----------------------------------------

    def ListExecutions(self, request: pb.ListExecutionsRequest, context: Context
                       ) -> pb.ListExecutionsResponse:
        return executions.list_executions(
            self.context.engine, principal.current(), request, flow_tenant=self._tenant,
            step_order=self._graph_order)

    def GetExecution(self, request: pb.GetExecutionRequest, context: Context) -> pb.Execution:
        # Started a moment ago, its record may still be in the recorder's next batch: the
        # caller who got its name can read it at once. Looked up *before* the query: the
        # recorder forgets an execution once its batch committed, so a lookup after a query
        # that ran just before that commit would find it nowhere.
        flow_id, execution_id = names.parse("flows/{flow}/executions/{execution}",
                                            request.name, "name")
        pending = self.context.starter.recorder.unwritten(flow_id, execution_id)
        try:
            return executions.get_execution(
                self.context.engine, principal.current(), request, step_order=self._graph_order)
        except NotFound:
            if pending is None or not principal.current().sees_tenant(pending.tenant):
                raise
            return _started_proto(pending)

    def ListDeadLetters(self, request: pb.ListDeadLettersRequest, context: Context
                        ) -> pb.ListDeadLettersResponse:
        return executions.list_dead_letters(
            self.context.amqp.url, principal.current(), request, flow_tenant=self._tenant,
            flow_steps=self._steps, flows=self._running)

    def GetDeadLetter(self, request: pb.GetDeadLetterRequest, context: Context
                      ) -> pb.DeadLetter:
        return executions.get_dead_letter(
            self.context.amqp.url, principal.current(), request, flow_tenant=self._tenant,
            flow_steps=self._steps)

    def DiscardDeadLetter(self, request: pb.DiscardDeadLetterRequest, context: Context
                          ) -> empty_pb2.Empty:
        return executions.discard_dead_letter(
            self.context.amqp.url, principal.current(), request, flow_tenant=self._tenant,
            flow_steps=self._steps)

    def ReplayDeadLetter(self, request: pb.ReplayDeadLetterRequest, context: Context
                         ) -> pb.Execution:
        return executions.replay_dead_letter(
            self.context.engine, self.context.amqp.url, principal.current(), request,
            flow_tenant=self._tenant, flow_steps=self._steps)

    # --- what the views need to know about flows -----------------------------------------

    def _tenant(self, flow_id: str) -> str | None:
        with Session(self.context.engine) as session:
            row = session.get(DeploymentRow, flow_id)
            return row.tenant if row is not None else None

    def _graph_order(self, flow_id: str) -> list[str]:
        """The flow's steps in graph order: a step before every step it feeds (ties in the
        order of the graph's nodes)."""
        with Session(self.context.engine) as session:
            row = session.get(DeploymentRow, flow_id)
            specs = list(row.specs) if row is not None else []
        return graph_order([(raw["step_id"], [edge["target"] for edge in raw.get("edges", [])])
                            for raw in specs])

    def _steps(self, flow_id: str) -> list[str]:
        """The steps whose queues exist: those of a flow that runs here."""
        with Session(self.context.engine) as session:
            row = session.get(DeploymentRow, flow_id)
            if row is None or row.state not in RUNNING_STATES:
                return []
            return [raw["step_id"] for raw in row.specs]

    def _running(self) -> list[str]:
        with Session(self.context.engine) as session:
            return list(session.exec(select(DeploymentRow.flow_id).where(
                col(DeploymentRow.state).in_(RUNNING_STATES))).all())
