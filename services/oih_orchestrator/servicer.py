"""The OrchestratorService servicer: thin, converts protos and calls the logic.

Access rules (tokens, permissions) are declared in the contract and enforced by the shared
interceptors; tenant isolation is enforced here: another tenant's flow answers NOT_FOUND.

The executions and dead-letter RPCs are plain functions of `oih_orchestrator.executions`; this
servicer tells them what they need about flows (tenant, running steps) from the deployments
table. Without that package they answer UNIMPLEMENTED.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import pika.exceptions
from google.protobuf import empty_pb2, json_format
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih.orchestrator.v1 import orchestrator_pb2 as pb
from oih.orchestrator.v1 import orchestrator_pb2_grpc
from oih_runtime import names, principal
from oih_runtime.errors import (
    FailedPrecondition,
    NotFound,
    Unavailable,
    Unimplemented,
)

from . import execute, runtime_view
from .amqp import Amqp, Unroutable
from .deployments import Orchestrator
from .models import RUNNING_STATES, STOPPING, DeploymentRow

Context = grpc.ServicerContext


@dataclass(frozen=True)
class ServiceContext:
    """What the executions functions get: the database, the broker, the orchestrator."""

    engine: Engine
    amqp: Amqp
    orchestrator: Orchestrator


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
        try:
            started = execute.start_execution(
                self.context.engine, self.context.amqp, flow_id, caller=principal.current(),
                data=json_format.MessageToDict(request.data),
                execution_id=request.execution_id, source="api")
        except Unroutable as error:
            raise FailedPrecondition(f"flow {request.flow} has no queues ({error})",
                                     reason="FLOW_NOT_ACTIVE", subject=request.flow) from None
        except pika.exceptions.AMQPError as error:
            raise Unavailable(f"the broker did not answer: {error!r}", reason="BROKER_UNAVAILABLE") from None
        views = execute.executions_package()
        if views is not None:
            return views.get_execution(  # type: ignore[no-any-return]
                self.context.engine, principal.current(), pb.GetExecutionRequest(
                    name=f"{request.flow}/executions/{started.execution_id}"))
        execution = pb.Execution(name=f"{request.flow}/executions/{started.execution_id}",
                                 flow=request.flow, state=pb.Execution.STATE_RUNNING,
                                 source=started.source, flow_version=started.flow_version)
        execution.create_time.FromDatetime(started.create_time)
        execution.update_time.FromDatetime(started.create_time)
        return execution

    # --- delegated to oih_orchestrator.executions ----------------------------------------

    def ListExecutions(self, request: pb.ListExecutionsRequest, context: Context
                       ) -> pb.ListExecutionsResponse:
        return self._views().list_executions(  # type: ignore[no-any-return]
            self.context.engine, principal.current(), request, flow_tenant=self._tenant)

    def GetExecution(self, request: pb.GetExecutionRequest, context: Context) -> pb.Execution:
        return self._views().get_execution(  # type: ignore[no-any-return]
            self.context.engine, principal.current(), request)

    def ListDeadLetters(self, request: pb.ListDeadLettersRequest, context: Context
                        ) -> pb.ListDeadLettersResponse:
        return self._views().list_dead_letters(  # type: ignore[no-any-return]
            self.context.amqp.url, principal.current(), request, flow_tenant=self._tenant,
            flow_steps=self._steps, flows=self._running)

    def GetDeadLetter(self, request: pb.GetDeadLetterRequest, context: Context
                      ) -> pb.DeadLetter:
        return self._views().get_dead_letter(  # type: ignore[no-any-return]
            self.context.amqp.url, principal.current(), request, flow_tenant=self._tenant,
            flow_steps=self._steps)

    def DiscardDeadLetter(self, request: pb.DiscardDeadLetterRequest, context: Context
                          ) -> empty_pb2.Empty:
        return self._views().discard_dead_letter(  # type: ignore[no-any-return]
            self.context.amqp.url, principal.current(), request, flow_tenant=self._tenant,
            flow_steps=self._steps)

    def ReplayDeadLetter(self, request: pb.ReplayDeadLetterRequest, context: Context
                         ) -> pb.Execution:
        return self._views().replay_dead_letter(  # type: ignore[no-any-return]
            self.context.engine, self.context.amqp.url, principal.current(), request,
            flow_tenant=self._tenant, flow_steps=self._steps)

    # --- what the views need to know about flows -----------------------------------------

    @staticmethod
    def _views() -> Any:
        views = execute.executions_package()
        if views is None:
            raise Unimplemented("executions and dead letters are not available yet")
        return views

    def _tenant(self, flow_id: str) -> str | None:
        with Session(self.context.engine) as session:
            row = session.get(DeploymentRow, flow_id)
            return row.tenant if row is not None else None

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
