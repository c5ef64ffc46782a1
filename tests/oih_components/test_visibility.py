"""The visibility rule in its two forms — Python (`visible`, for one component, row or proto)
and SQL (`visible_clause`, for lists) — agrees on every combination of access, tenant, owners
and kind of principal, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import uuid

import pytest
from sqlmodel import Session, col, select

from oih_components import convert, visibility
from oih_components.models import (
    ACCESS_PRIVATE,
    ACCESS_PUBLIC,
    ACCESS_TENANT,
    ComponentRow,
    OwnerRow,
)
from oih_components.server import Built
from oih_runtime.db import transaction
from oih_runtime.principal import Principal

RUN = uuid.uuid4().hex[:6]  # keeps this module's tenants apart from other tests' rows
T_A, T_B = f"tenants/a-{RUN}", f"tenants/b-{RUN}"
USER = f"users/p-{RUN}"

PRINCIPALS = {
    "member of A": Principal(USER, T_A, frozenset({"components.read"})),
    "tenant admin of A": Principal(f"users/adm-{RUN}", T_A,
                                   frozenset({"components.read", "tenant.account.update"})),
    "member of B": Principal(f"users/q-{RUN}", T_B, frozenset({"components.read"})),
    "service account of B": Principal(f"service-accounts/s-{RUN}", T_B, frozenset(),
                                      typ="service"),
    "platform admin": Principal(f"users/root-{RUN}", "tenants/platform", frozenset({"all"})),
}
OWNER_SETS: list[list[tuple[str, int]]] = [
    [], [(USER, 1)], [(T_A, 2)], [(T_B, 2)], [(f"service-accounts/s-{RUN}", 3)],
    [(f"users/other-{RUN}", 1)],
]


@pytest.fixture(scope="module")
def matrix(components_service: Built) -> list[ComponentRow]:
    rows = []
    with transaction(components_service.engine) as session:
        combos = itertools.product((ACCESS_PRIVATE, ACCESS_TENANT, ACCESS_PUBLIC), (T_A, T_B),
                                   OWNER_SETS)
        for access, tenant, owners in combos:
            row = ComponentRow(id=uuid.uuid4().hex, tenant=tenant, display_name="m",
                               access=access, entry_point="m:c", etag="e",
                               owners=[OwnerRow(owner_id=i, owner_type=t) for i, t in owners])
            session.add(row)
            rows.append(row)
    return rows


@pytest.mark.parametrize("who", list(PRINCIPALS))
def test_sql_and_python_forms_agree(components_service: Built, matrix: list[ComponentRow],
                                    who: str) -> None:
    principal = PRINCIPALS[who]
    ids = [r.id for r in matrix]
    with Session(components_service.engine) as session:
        by_sql = set(session.exec(select(ComponentRow.id).where(
            col(ComponentRow.id).in_(ids), visibility.visible_clause(principal))).all())
    by_row = {r.id for r in matrix if visibility.visible(r, principal)}
    by_proto = {r.id for r in matrix if visibility.visible(convert.component(r), principal)}
    assert by_sql == by_row == by_proto
    assert by_row  # every principal sees at least the public ones


def test_the_rule_itself() -> None:
    def row(access: int, tenant: str, *owners: str) -> ComponentRow:
        return ComponentRow(id="x", tenant=tenant, display_name="m", access=access, etag="e",
                            owners=[OwnerRow(owner_id=o, owner_type=1) for o in owners])

    member, admin, stranger, root = (PRINCIPALS[k] for k in (
        "member of A", "tenant admin of A", "member of B", "platform admin"))
    private_a = row(ACCESS_PRIVATE, T_A)
    assert not visibility.visible(private_a, member)
    assert visibility.visible(private_a, admin) and visibility.may_change(private_a, admin)
    assert not visibility.visible(private_a, stranger)
    assert visibility.may_change(private_a, root)
    owned = row(ACCESS_PRIVATE, T_A, USER)
    assert visibility.visible(owned, member) and visibility.may_change(owned, member)
    public_b = row(ACCESS_PUBLIC, T_B)
    assert visibility.visible(public_b, member) and not visibility.may_change(public_b, member)
    tenant_a = row(ACCESS_TENANT, T_A)
    assert visibility.visible(tenant_a, member) and not visibility.may_change(tenant_a, member)
    assert not visibility.visible(tenant_a, stranger)
