"""Every list query of flows, components and executions is a range of an index, on SQLite and
PostgreSQL: no sort of all rows (SQLite's "USE TEMP B-TREE FOR ORDER BY", PostgreSQL's Sort)
and no scan of the table, on the first page and on the pages after it (keyset paging). So a
page costs the same with ten rows and with a million (bench/scale.py measures it). IAM's lists
are checked in tests/oih_iam/test_list_plans.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from oih.orchestrator.v1 import orchestrator_pb2
from oih_components import models as component_models
from oih_components.logic import Components
from oih_components.models import ACCESS_PUBLIC, ACCESS_TENANT, ComponentRow
from oih_flows import models as flow_models
from oih_flows.logic import Flows
from oih_flows.models import FlowRow
from oih_orchestrator.executions import models as execution_models
from oih_orchestrator.executions.models import ExecutionRow
from oih_orchestrator.executions.views import list_executions
from oih_runtime.db import transaction
from oih_runtime.principal import ALL, Principal
from tests.support.query_plans import assert_statement_served_by_index, captured_selects


@pytest.fixture
def tables() -> Sequence[type[SQLModel]]:
    return (*flow_models.TABLES, *component_models.TABLES, *execution_models.TABLES)


TENANT = "tenants/t1"
MEMBER = Principal(subject="users/u1", tenant=TENANT, permissions=frozenset({"flows.read"}))
ADMIN = Principal(subject="users/admin", tenant="tenants/platform", permissions=frozenset({ALL}))
ORDERS = ["", "create_time", "create_time desc", "update_time", "update_time desc",
          "display_name", "display_name desc"]


def every_page(engine: Engine, table: str, list_page: Callable[[str], tuple[Sequence[Any], str]]
               ) -> int:
    """Walk all pages (of one row each), checking the plan of every query on `table`."""
    with captured_selects(engine, table) as statements:
        rows, token = list_page("")
        seen = len(rows)
        while token:
            rows, token = list_page(token)
            seen += len(rows)
    assert statements
    for statement, parameters in statements:
        assert_statement_served_by_index(engine, statement, parameters)
    return seen


@pytest.mark.parametrize("order_by", ORDERS)
@pytest.mark.parametrize("caller", [MEMBER, ADMIN], ids=["member", "admin"])
def test_list_flows_is_served_by_an_index(engine: Engine, caller: Principal,
                                          order_by: str) -> None:
    with transaction(engine) as session:
        for i in range(3):
            session.add(FlowRow(id=f"f{i}", tenant=TENANT, display_name=f"flow {i % 2}", state=1))
    flows = Flows(engine, components=None, secrets=None)  # type: ignore[arg-type]  (unused by lists)
    seen = every_page(engine, "flows_flow", lambda token: flows.list(
        caller, 1, token, "", order_by))
    assert seen == 3


@pytest.mark.parametrize("order_by", ORDERS)
@pytest.mark.parametrize("caller", [MEMBER, ADMIN], ids=["member", "admin"])
def test_list_components_is_served_by_an_index(engine: Engine, caller: Principal,
                                               order_by: str) -> None:
    with transaction(engine) as session:
        for i, access in enumerate((ACCESS_PUBLIC, ACCESS_TENANT, ACCESS_TENANT)):
            session.add(ComponentRow(id=f"c{i}", tenant=TENANT, display_name=f"c {i % 2}",
                                     access=access, entry_point="m:f", etag="e"))
    components = Components(engine)
    seen = every_page(engine, "components_component", lambda token: components.list(
        caller, 1, token, "", order_by))
    assert seen == 3


@pytest.mark.parametrize("parent", ["flows/f1", "flows/-"])
@pytest.mark.parametrize("caller", [MEMBER, ADMIN], ids=["member", "admin"])
def test_list_executions_is_served_by_an_index(engine: Engine, caller: Principal,
                                               parent: str) -> None:
    with transaction(engine) as session:
        for i in range(3):
            session.add(ExecutionRow(flow_id="f1", execution_id=f"e{i}", tenant=TENANT))

    def list_page(token: str) -> tuple[Sequence[Any], str]:
        reply = list_executions(engine, caller, orchestrator_pb2.ListExecutionsRequest(
            parent=parent, page_size=1, page_token=token))
        return reply.executions, reply.next_page_token

    assert every_page(engine, "orch_execution", list_page) == 3


@pytest.mark.parametrize("filter_text", ["state=ACTIVE", 'display_name:"flow"', "has_cron=false"])
def test_filtered_list_flows_is_served_by_an_index(engine: Engine, filter_text: str) -> None:
    with transaction(engine) as session:
        for i in range(3):
            session.add(FlowRow(id=f"f{i}", tenant=TENANT, display_name=f"flow {i}", state=2))
    flows = Flows(engine, components=None, secrets=None)  # type: ignore[arg-type]  (unused by lists)
    every_page(engine, "flows_flow", lambda token: flows.list(MEMBER, 1, token, filter_text, ""))


@pytest.mark.parametrize("filter_text", ["state=RUNNING", "source=api"])
def test_filtered_list_executions_is_served_by_an_index(engine: Engine, filter_text: str) -> None:
    with transaction(engine) as session:
        for i in range(3):
            session.add(ExecutionRow(flow_id="f1", execution_id=f"e{i}", tenant=TENANT,
                                     source="api"))

    def list_page(token: str) -> tuple[Sequence[Any], str]:
        reply = list_executions(engine, MEMBER, orchestrator_pb2.ListExecutionsRequest(
            parent="flows/f1", page_size=1, page_token=token, filter=filter_text))
        return reply.executions, reply.next_page_token

    assert every_page(engine, "orch_execution", list_page) == 3
