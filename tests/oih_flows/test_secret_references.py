"""A flow may name only secrets of its own tenant: a node's `credentials` and the webhook's
`hmac_secret` are checked against the real Secrets service, as the caller, at create and
update; a missing or foreign secret is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import field_mask_pb2

from oih.flows.v1 import flows_pb2 as pb
from oih.secrets.v1 import secrets_pb2 as spb
from tests.oih_flows.conftest import Caller, Tenant, two_node_flow
from tests.support.grpc_errors import field_violations

CREDENTIALS = "flow.graph.nodes[1].credentials"
HMAC = "flow.webhook_settings.hmac_secret"


def with_secrets(tenant: Tenant, credentials: str = "", hmac_secret: str = "") -> pb.Flow:
    flow = two_node_flow(tenant.component)
    flow.graph.nodes[1].credentials = credentials
    flow.webhook_settings.hmac_secret = hmac_secret
    return flow


def create_error(grpc_stub: object, caller: Caller, flow: pb.Flow) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub.CreateFlow(pb.CreateFlowRequest(flow=flow), metadata=caller.md)  # type: ignore[attr-defined]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value


def test_own_tenants_secrets_are_accepted(grpc_stub: object, tenant: Tenant,
                                          make_secret: Callable[..., str]) -> None:
    api_key = make_secret(tenant.user)
    hmac = make_secret(tenant.user, spb.Secret.TYPE_HMAC_KEY)
    created = grpc_stub.CreateFlow(pb.CreateFlowRequest(  # type: ignore[attr-defined]
        flow=with_secrets(tenant, api_key, hmac)), metadata=tenant.user.md)
    assert created.graph.nodes[1].credentials == api_key
    assert created.webhook_settings.hmac_secret == hmac


def test_missing_and_foreign_secrets_are_invalid_naming_the_field(
        grpc_stub: object, tenant: Tenant, make_caller: Callable[..., Caller],
        make_secret: Callable[..., str]) -> None:
    foreign = make_secret(make_caller(), spb.Secret.TYPE_HMAC_KEY)
    for credentials, hmac in [("secrets/missing", ""), (foreign, ""), ("", foreign),
                              ("", "secrets/missing")]:
        error = create_error(grpc_stub, tenant.user, with_secrets(tenant, credentials, hmac))
        assert field_violations(error) == [CREDENTIALS if credentials else HMAC]
        assert "does not exist in the flow's tenant" in (error.details() or "")


def test_hmac_secret_must_be_an_hmac_key(grpc_stub: object, tenant: Tenant,
                                         make_secret: Callable[..., str]) -> None:
    api_key = make_secret(tenant.user)
    error = create_error(grpc_stub, tenant.user, with_secrets(tenant, "", api_key))
    assert field_violations(error) == [HMAC]


def test_update_checks_the_secrets_too(grpc_stub: object, tenant: Tenant,
                                       make_caller: Callable[..., Caller],
                                       make_secret: Callable[..., str]) -> None:
    created = grpc_stub.CreateFlow(pb.CreateFlowRequest(flow=with_secrets(tenant)),  # type: ignore[attr-defined]
                                   metadata=tenant.user.md)
    changed = with_secrets(tenant, make_secret(make_caller()))
    changed.name = created.name
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub.UpdateFlow(pb.UpdateFlowRequest(  # type: ignore[attr-defined]
            flow=changed, update_mask=field_mask_pb2.FieldMask(paths=["graph"])),
            metadata=tenant.user.md)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == [CREDENTIALS]
