"""ListExecutions and GetExecution: plain functions over the view, returning protos.

Visibility follows the tenant stored on each execution (the flow's tenant when it ran): a
principal sees its own tenant's executions, a platform admin every tenant's. Another tenant's
execution is NOT_FOUND, never PERMISSION_DENIED, so ids of other tenants are not confirmed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih.orchestrator.v1 import orchestrator_pb2
from oih_runtime import filtering, names, paging
from oih_runtime.clock import aware
from oih_runtime.errors import NotFound
from oih_runtime.principal import Principal

from .ingest import steps_of
from .models import ExecutionRow, ExecutionState, StepExecutionRow

_STATES = {state.value for state in ExecutionState}

#: `flow id → its tenant`, or None when the flow does not exist (or is unknown here).
FlowTenant = Callable[[str], str | None]
#: `flow id → its step ids in graph order` (empty when unknown here).
StepOrder = Callable[[str], list[str]]


def parse_parent(parent: str) -> str:
    """`flows/{flow}` → flow id; `-` means every visible flow."""
    if parent == "flows/-":
        return "-"
    return names.resource_id(parent, "flows", "parent")


def parse_name(name: str) -> tuple[str, str]:
    flow_id, execution_id = names.parse("flows/{flow}/executions/{execution}", name, "name")
    return flow_id, execution_id


#: The list's order, served by the indexes of models.ExecutionRow.
NEWEST_FIRST = (paging.Key(col(ExecutionRow.create_time), descending=True),
                paging.Key(col(ExecutionRow.execution_id), descending=True))


def list_executions(engine: Engine, principal: Principal,
                    request: orchestrator_pb2.ListExecutionsRequest,
                    flow_tenant: FlowTenant | None = None, step_order: StepOrder | None = None
                    ) -> orchestrator_pb2.ListExecutionsResponse:
    """Newest first. With `flow_tenant`, a named flow the caller may not see is NOT_FOUND;
    without it, the list is simply empty."""
    flow_id = parse_parent(request.parent)
    query = select(ExecutionRow)
    if flow_id != "-":
        if flow_tenant is not None:
            tenant = flow_tenant(flow_id)
            if tenant is None or not principal.sees_tenant(tenant):
                raise NotFound("flow", f"flows/{flow_id}")
        query = query.where(ExecutionRow.flow_id == flow_id)
    if not principal.is_platform_admin:
        query = query.where(ExecutionRow.tenant == principal.tenant)
    for condition in filtering.conditions(request.filter, {"state": _state, "source": _source}):
        query = query.where(condition)
    with Session(engine) as session:
        rows, token = paging.keyset_page(session, query, NEWEST_FIRST, request.page_size,
                                         request.page_token,
                                         fingerprint=f"{request.parent}|{request.filter}")
        return orchestrator_pb2.ListExecutionsResponse(
            executions=[to_proto(row, _ordered(steps_of(session, row), row, step_order))
                        for row in rows],
            next_page_token=token)


def get_execution(engine: Engine, principal: Principal,
                  request: orchestrator_pb2.GetExecutionRequest,
                  step_order: StepOrder | None = None) -> orchestrator_pb2.Execution:
    flow_id, execution_id = parse_name(request.name)
    with Session(engine) as session:
        row = session.get(ExecutionRow, (flow_id, execution_id))
        if row is None or not principal.sees_tenant(row.tenant):
            raise NotFound("execution", request.name)
        return to_proto(row, _ordered(steps_of(session, row), row, step_order))


def _ordered(steps: list[StepExecutionRow], row: ExecutionRow,
             step_order: StepOrder | None) -> list[StepExecutionRow]:
    """Steps in the flow graph's order; steps the graph does not have (any more) last, in
    the order they were first reached."""
    order = {step: index for index, step in enumerate(step_order(row.flow_id))} if (
        step_order is not None) else {}
    return sorted(steps, key=lambda step: (order.get(step.step_id, len(order)), step.position))


def to_proto(row: ExecutionRow, steps: list[StepExecutionRow]) -> orchestrator_pb2.Execution:
    result = orchestrator_pb2.Execution(
        name=f"flows/{row.flow_id}/executions/{row.execution_id}", flow=f"flows/{row.flow_id}",
        state=orchestrator_pb2.Execution.State.Value(f"STATE_{row.state}"),
        source=row.source, flow_version=row.flow_version)
    result.create_time.FromDatetime(aware(row.create_time))
    result.update_time.FromDatetime(aware(row.update_time))
    if row.end_time is not None:
        result.end_time.FromDatetime(aware(row.end_time))
    for step in steps:
        item = result.steps.add(step_id=step.step_id, messages_in=step.messages_in,
                                messages_out=step.messages_out,
                                messages_routed=step.messages_routed, errors=step.errors,
                                dead_lettered=step.dead_lettered)
        for data in step.input_samples:
            item.input_samples.add().update(data)
        for data in step.output_samples:
            item.output_samples.add().update(data)
        if step.last_error:
            json_format.ParseDict(step.last_error, item.last_error, ignore_unknown_fields=True)
    return result


def _state(op: str, value: str) -> Any:
    value = value.upper().removeprefix("STATE_")
    if op not in ("=", "!=") or value not in _STATES:
        raise ValueError("use state=RUNNING, SUCCEEDED or FAILED")
    return filtering.compare(ExecutionRow.state, op, value)


def _source(op: str, value: str) -> Any:
    if op not in ("=", "!="):
        raise ValueError('use source="scheduler" (= or !=)')
    return filtering.compare(ExecutionRow.source, op, value)
