"""IAM's lists are ranges of an index on SQLite and PostgreSQL (no sort of the table, no scan),
on every page: the queries checked are the ones the RPCs really run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from oih.iam.v1 import iam_pb2, iam_pb2_grpc
from oih_iam.server import Built
from tests.oih_iam.conftest import bearer
from tests.oih_iam.test_iam_servicer import make_tenant, make_user
from tests.support.query_plans import assert_statement_served_by_index, captured_selects

Stub = iam_pb2_grpc.IamServiceStub

LISTS: dict[str, tuple[str, Callable[[Stub, str, str, str], Any]]] = {
    "tenants": ("iam_tenant", lambda stub, auth, _tenant, token: stub.ListTenants(
        iam_pb2.ListTenantsRequest(page_size=1, page_token=token), metadata=bearer(auth))),
    "users of a tenant": ("iam_user", lambda stub, auth, tenant, token: stub.ListUsers(
        iam_pb2.ListUsersRequest(page_size=1, page_token=token, tenant=tenant),
        metadata=bearer(auth))),
    "all users": ("iam_user", lambda stub, auth, _tenant, token: stub.ListUsers(
        iam_pb2.ListUsersRequest(page_size=1, page_token=token), metadata=bearer(auth))),
    "roles": ("iam_role", lambda stub, auth, _tenant, token: stub.ListRoles(
        iam_pb2.ListRolesRequest(page_size=1, page_token=token), metadata=bearer(auth))),
    "service accounts": ("iam_service_account", lambda stub, auth, _tenant, token:
                         stub.ListServiceAccounts(iam_pb2.ListServiceAccountsRequest(
                             page_size=1, page_token=token), metadata=bearer(auth))),
}


@pytest.mark.parametrize("which", sorted(LISTS))
def test_iam_list_is_served_by_an_index(grpc_stub: Stub, admin_token: str, iam_service: Built,
                                        which: str) -> None:
    tenant = make_tenant(grpc_stub, admin_token)
    for _ in range(2):
        make_user(grpc_stub, admin_token, tenant=tenant)
        grpc_stub.CreateServiceAccount(iam_pb2.CreateServiceAccountRequest(
            service_account=iam_pb2.ServiceAccount(display_name="sync", tenant=tenant)),
            metadata=bearer(admin_token))
    table, list_page = LISTS[which]
    engine = iam_service.iam.engine
    with captured_selects(engine, table) as statements:
        token, pages = "", 0
        while True:
            reply = list_page(grpc_stub, admin_token, tenant, token)
            pages += 1
            token = reply.next_page_token
            if not token or pages == 3:
                break
    assert pages > 1  # the queries after the first page were checked too
    list_queries = [s for s in statements if " LIMIT " in s[0].replace("\n", " ")]
    assert list_queries
    for statement, parameters in list_queries:
        assert_statement_served_by_index(engine, statement, parameters)
