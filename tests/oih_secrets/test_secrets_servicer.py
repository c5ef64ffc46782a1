"""The SecretService over a real gRPC server: write-only values, tenant isolation, etags,
paging and filters, rotation with a grace period, who may resolve, encryption bound to the
record, and master-key rotation."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, json_format, struct_pb2
from sqlmodel import Session, col, select

from oih.events.v1 import event_pb2
from oih.events.v1 import iam_pb2 as iam_events
from oih.secrets.v1 import secrets_pb2 as pb
from oih_runtime import crypto
from oih_runtime.bus.models import OutboxEvent
from oih_runtime.db import transaction
from oih_secrets import events
from oih_secrets.models import SecretRow
from oih_secrets.server import Built
from tests.support.grpc_errors import field_violations, reason
from tests.support.tokens import Caller

Make = Callable[..., Caller]
Type = pb.Secret.Type


def struct(value: dict[str, object]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def unique(prefix: str = "v") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def create(stub: object, caller: Caller, value: dict[str, object] | None = None,
           secret_type: int = Type.TYPE_API_KEY, **fields: object) -> pb.Secret:
    secret = pb.Secret(display_name=fields.pop("display_name", unique("key")), type=secret_type,  # type: ignore[arg-type]
                       value=struct(value or {"api_key": unique()}), **fields)  # type: ignore[arg-type]
    return stub.CreateSecret(pb.CreateSecretRequest(secret=secret), metadata=caller.md)  # type: ignore[attr-defined, no-any-return]


def resolver(make_caller: Make, tenant: str = "tenants/platform") -> Caller:
    """The platform services' account: a service token holding secrets.resolve by name."""
    return make_caller(tenant, ("all", "secrets.resolve"), subject="service-accounts/oih-platform",
                       typ="service")


def resolve(stub: object, caller: Caller, name: str, tenant: str,
            flow: str = "flows/f1") -> pb.ResolvedSecret:
    return stub.ResolveSecret(pb.ResolveSecretRequest(name=name, tenant=tenant, flow=flow),  # type: ignore[attr-defined, no-any-return]
                              metadata=caller.md)


def test_value_is_write_only_and_resolvable_by_the_platform(grpc_stub: object,
                                                            make_caller: Make) -> None:
    owner = make_caller()
    key = unique("api")
    created = create(grpc_stub, owner, {"api_key": key}, description="crm")
    assert created.name.startswith("secrets/") and created.tenant == owner.tenant
    assert created.owners == [owner.subject]
    assert len(created.fingerprint) == 12 and not created.HasField("value")
    got = grpc_stub.GetSecret(pb.GetSecretRequest(name=created.name), metadata=owner.md)  # type: ignore[attr-defined]
    listed = grpc_stub.ListSecrets(pb.ListSecretsRequest(), metadata=owner.md)  # type: ignore[attr-defined]
    for answer in (created, got, listed):
        assert key not in json_format.MessageToJson(answer)
        assert key.encode() not in answer.SerializeToString()
    assert got.fingerprint == created.fingerprint
    resolved = resolve(grpc_stub, resolver(make_caller), created.name, owner.tenant)
    assert json.loads(resolved.value) == {"api_key": key}
    assert resolved.type == Type.TYPE_API_KEY and resolved.previous_value == b""


@pytest.mark.parametrize(("secret", "fields"), [
    (pb.Secret(display_name="x", type=Type.TYPE_API_KEY), ["secret.value"]),
    (pb.Secret(display_name="x", value=struct({"api_key": "k"})), ["secret.type"]),
    (pb.Secret(display_name=" ", type=Type.TYPE_API_KEY, value=struct({"api_key": "k"})),
     ["secret.display_name"]),
    (pb.Secret(display_name="x", type=Type.TYPE_BASIC_AUTH, value=struct({"username": "u"})),
     ["secret.value"]),
    (pb.Secret(display_name="x", type=Type.TYPE_BEARER_TOKEN, value=struct({"token": 5})),
     ["secret.value"]),
    (pb.Secret(display_name="x", type=Type.TYPE_HMAC_KEY, value=struct({"key": "k", "x": "y"})),
     ["secret.value"]),
    (pb.Secret(display_name="x", type=Type.TYPE_JSON, value=struct({})), ["secret.value"]),
    (pb.Secret(display_name="x", type=Type.TYPE_API_KEY, value=struct({"api_key": "k"}),
               owners=["root"]), ["secret.owners[0]"]),
    (pb.Secret(display_name="x", type=Type.TYPE_API_KEY, value=struct({"api_key": "k"}),
               rotation_grace_period=duration_pb2.Duration(seconds=31 * 86400)),
     ["secret.rotation_grace_period"]),
    (pb.Secret(display_name="x", type=Type.TYPE_JSON,
               value=struct({"blob": "a" * 70_000})), ["secret.value"]),
])
def test_bad_secret_is_invalid_argument_naming_the_field(grpc_stub: object, make_caller: Make,
                                                         secret: pb.Secret,
                                                         fields: list[str]) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub.CreateSecret(pb.CreateSecretRequest(secret=secret), metadata=make_caller().md)  # type: ignore[attr-defined]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == fields
    assert '"k"' not in (caught.value.details() or "")


def test_other_tenants_secret_is_not_found_everywhere(grpc_stub: object,
                                                      make_caller: Make) -> None:
    owner, stranger = make_caller(), make_caller()
    created = create(grpc_stub, owner)
    calls = [
        lambda: grpc_stub.GetSecret(pb.GetSecretRequest(name=created.name), metadata=stranger.md),  # type: ignore[attr-defined]
        lambda: grpc_stub.UpdateSecret(pb.UpdateSecretRequest(  # type: ignore[attr-defined]
            secret=pb.Secret(name=created.name, display_name="mine")), metadata=stranger.md),
        lambda: grpc_stub.DeleteSecret(pb.DeleteSecretRequest(name=created.name),  # type: ignore[attr-defined]
                                       metadata=stranger.md),
        # A platform service resolving for another tenant's flow.
        lambda: resolve(grpc_stub, resolver(make_caller), created.name, stranger.tenant),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = grpc_stub.ListSecrets(pb.ListSecretsRequest(), metadata=stranger.md)  # type: ignore[attr-defined]
    assert created.name not in [s.name for s in listed.secrets]
    still = grpc_stub.GetSecret(pb.GetSecretRequest(name=created.name), metadata=owner.md)  # type: ignore[attr-defined]
    assert still.display_name == created.display_name


@pytest.mark.parametrize(("permissions", "typ"), [
    (("secrets.read", "secrets.write", "tenant.account.update"), "user"),  # a tenant admin
    (("secrets.read", "secrets.resolve"), "user"),  # a forged claim on a user token
    (("all",), "user"),  # a platform administrator
    (("all",), "service"),  # "all" is not "secrets.resolve"
    (("secrets.read",), "service"),  # a tenant's service account
])
def test_only_platform_services_resolve(grpc_stub: object, make_caller: Make,
                                        permissions: tuple[str, ...], typ: str) -> None:
    owner = make_caller()
    created = create(grpc_stub, owner)
    caller = make_caller(owner.tenant, permissions, typ=typ)
    with pytest.raises(grpc.RpcError) as caught:
        resolve(grpc_stub, caller, created.name, owner.tenant)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_resolve_is_audited_without_the_value(grpc_stub: object, make_caller: Make,
                                              secrets_service: Built) -> None:
    owner = make_caller()
    key = unique("audited")
    created = create(grpc_stub, owner, {"api_key": key})
    resolve(grpc_stub, resolver(make_caller), created.name, owner.tenant, flow="flows/audit-me")
    with Session(secrets_service.engine) as session:
        events = session.exec(select(OutboxEvent).where(
            col(OutboxEvent.subject) == created.name)).all()
    kinds = [e.event_type for e in events]
    assert kinds == ["oih.secret.created", "oih.secret.resolved"]
    assert b"flows/audit-me" in events[1].body and b"service-accounts/oih-platform" in events[1].body
    assert all(key.encode() not in e.body for e in events)


def test_resolve_bad_arguments_name_the_field(grpc_stub: object, make_caller: Make) -> None:
    platform = resolver(make_caller)
    for name, tenant, flow, field in [("flows/x", "tenants/t", "", "name"),
                                      ("secrets/x", "t", "", "tenant"),
                                      ("secrets/x", "tenants/t", "f", "flow")]:
        with pytest.raises(grpc.RpcError) as caught:
            resolve(grpc_stub, platform, name, tenant, flow)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(caught.value) == [field]


def test_rotation_keeps_the_previous_value_for_the_grace_period(grpc_stub: object,
                                                               make_caller: Make) -> None:
    owner = make_caller()
    platform = resolver(make_caller)
    created = create(grpc_stub, owner, {"key": "old-hmac-key"}, Type.TYPE_HMAC_KEY,
                     rotation_grace_period=duration_pb2.Duration(seconds=600))
    rotated = grpc_stub.UpdateSecret(pb.UpdateSecretRequest(  # type: ignore[attr-defined]
        secret=pb.Secret(name=created.name, value=struct({"key": "new-hmac-key"}),
                         etag=created.etag)), metadata=owner.md)
    assert rotated.fingerprint != created.fingerprint
    assert rotated.previous_fingerprint == created.fingerprint
    assert rotated.HasField("previous_expire_time") and rotated.etag != created.etag
    resolved = resolve(grpc_stub, platform, created.name, owner.tenant)
    assert json.loads(resolved.value) == {"key": "new-hmac-key"}
    assert json.loads(resolved.previous_value) == {"key": "old-hmac-key"}
    # A rotation with no grace period ends the old value at once.
    ended = grpc_stub.UpdateSecret(pb.UpdateSecretRequest(  # type: ignore[attr-defined]
        secret=pb.Secret(name=created.name, value=struct({"key": "newest"}),
                         rotation_grace_period=duration_pb2.Duration(seconds=0)),
        update_mask=field_mask_pb2.FieldMask(paths=["value", "rotation_grace_period"])),
        metadata=owner.md)
    assert ended.previous_fingerprint == ""
    assert resolve(grpc_stub, platform, created.name, owner.tenant).previous_value == b""


def test_stale_etag_is_aborted_and_type_change_needs_a_value(grpc_stub: object,
                                                             make_caller: Make) -> None:
    owner = make_caller()
    created = create(grpc_stub, owner)
    grpc_stub.UpdateSecret(pb.UpdateSecretRequest(  # type: ignore[attr-defined]
        secret=pb.Secret(name=created.name, description="one", etag=created.etag)),
        metadata=owner.md)
    for secret, code in [
        (pb.Secret(name=created.name, description="two", etag=created.etag),
         grpc.StatusCode.ABORTED),
        (pb.Secret(name=created.name, type=Type.TYPE_BEARER_TOKEN),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            grpc_stub.UpdateSecret(pb.UpdateSecretRequest(secret=secret), metadata=owner.md)  # type: ignore[attr-defined]
        assert caught.value.code() == code
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub.DeleteSecret(pb.DeleteSecretRequest(name=created.name, etag=created.etag),  # type: ignore[attr-defined]
                               metadata=owner.md)
    assert caught.value.code() == grpc.StatusCode.ABORTED
    grpc_stub.DeleteSecret(pb.DeleteSecretRequest(name=created.name), metadata=owner.md)  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub.GetSecret(pb.GetSecretRequest(name=created.name), metadata=owner.md)  # type: ignore[attr-defined]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_pages_filters_and_orders(grpc_stub: object, make_caller: Make) -> None:
    owner = make_caller()
    colleague = make_caller(owner.tenant)
    names = [create(grpc_stub, owner, display_name=f"k{i}").name for i in range(3)]
    hmac = create(grpc_stub, colleague, {"key": "h"}, Type.TYPE_HMAC_KEY, display_name="h")
    seen, token = [], ""
    while True:
        page = grpc_stub.ListSecrets(pb.ListSecretsRequest(page_size=2, page_token=token),  # type: ignore[attr-defined]
                                     metadata=owner.md)
        seen += [s.name for s in page.secrets]
        token = page.next_page_token
        if not token:
            break
    assert seen == [*names, hmac.name]
    by_type = grpc_stub.ListSecrets(pb.ListSecretsRequest(filter="type=HMAC_KEY"),  # type: ignore[attr-defined]
                                    metadata=owner.md)
    assert [s.name for s in by_type.secrets] == [hmac.name]
    by_owner = grpc_stub.ListSecrets(pb.ListSecretsRequest(  # type: ignore[attr-defined]
        filter=f'owner="{colleague.subject}"'), metadata=owner.md)
    assert [s.name for s in by_owner.secrets] == [hmac.name]
    ordered = grpc_stub.ListSecrets(pb.ListSecretsRequest(order_by="display_name desc"),  # type: ignore[attr-defined]
                                    metadata=owner.md)
    assert [s.display_name for s in ordered.secrets] == ["k2", "k1", "k0", "h"]
    for request, field in [(pb.ListSecretsRequest(filter="type=SHINY"), "filter"),
                           (pb.ListSecretsRequest(order_by="value"), "order_by"),
                           (pb.ListSecretsRequest(page_token="nonsense"), "page_token")]:
        with pytest.raises(grpc.RpcError) as caught:
            grpc_stub.ListSecrets(request, metadata=owner.md)  # type: ignore[attr-defined]
        assert field_violations(caught.value) == [field]


def test_ciphertext_moved_to_another_row_does_not_decrypt(grpc_stub: object, make_caller: Make,
                                                          secrets_service: Built) -> None:
    owner = make_caller()
    platform = resolver(make_caller)
    first = create(grpc_stub, owner, {"api_key": "first-value"})
    second = create(grpc_stub, owner, {"api_key": "second-value"})
    with Session(secrets_service.engine) as session:
        source = session.get(SecretRow, first.name.removeprefix("secrets/"))
        target = session.get(SecretRow, second.name.removeprefix("secrets/"))
        assert source is not None and target is not None
        assert b"first-value" not in source.sealed_value.encode()
        target.sealed_value = source.sealed_value
        session.add(target)
        session.commit()
    with pytest.raises(grpc.RpcError) as caught:
        resolve(grpc_stub, platform, second.name, owner.tenant)
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert reason(caught.value) == "SECRET_UNDECRYPTABLE"
    assert "first-value" not in (caught.value.details() or "")
    assert json.loads(resolve(grpc_stub, platform, first.name, owner.tenant).value) == {
        "api_key": "first-value"}


def test_master_key_rotation_keeps_every_secret_readable(grpc_stub: object, make_caller: Make,
                                                         secrets_service: Built,
                                                         master_key_file: Path) -> None:
    owner = make_caller()
    platform = resolver(make_caller)
    admin = make_caller("tenants/platform", ("all",))
    created = {create(grpc_stub, owner, {"api_key": f"value-{i}"}).name: f"value-{i}"
               for i in range(3)}
    rotated = grpc_stub.UpdateSecret(pb.UpdateSecretRequest(  # type: ignore[attr-defined]
        secret=pb.Secret(name=next(iter(created)), value=struct({"api_key": "value-new"}))),
        metadata=owner.md)
    first = rotated.name
    created[first] = "value-new"
    old_line = master_key_file.read_text().strip()
    new_line = crypto.new_master_key_line()
    # Step 1: the new key goes first; the old one still opens what it wrapped.
    master_key_file.write_text(f"{new_line}\n{old_line}\n")
    with pytest.raises(grpc.RpcError) as caught:  # administrators only
        grpc_stub.RotateMasterKey(pb.RotateMasterKeyRequest(), metadata=owner.md)  # type: ignore[attr-defined]
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    answer = grpc_stub.RotateMasterKey(pb.RotateMasterKeyRequest(), metadata=admin.md)  # type: ignore[attr-defined]
    assert answer.master_key_id == new_line.split(":")[0]
    assert answer.rewrapped >= len(created)
    # Step 2: the old key is gone; every value (and the rotated one's previous) still opens.
    master_key_file.write_text(f"{new_line}\n")
    for name, value in created.items():
        resolved = resolve(grpc_stub, platform, name, owner.tenant)
        assert json.loads(resolved.value) == {"api_key": value}
    assert json.loads(resolve(grpc_stub, platform, first, owner.tenant).previous_value) == {
        "api_key": "value-0"}
    with Session(secrets_service.engine) as session:
        wrapped_by = {crypto.sealed_by(row.sealed_value) for row in session.exec(select(SecretRow))
                      if f"secrets/{row.id}" not in answer.undecryptable}
    assert wrapped_by == {answer.master_key_id}
    again = grpc_stub.RotateMasterKey(pb.RotateMasterKeyRequest(), metadata=admin.md)  # type: ignore[attr-defined]
    assert again.rewrapped == 0
    # Only the row a test above tampered with (its ciphertext moved in) is reported, by name.
    assert not set(answer.undecryptable) & set(created)


def test_a_deleted_tenant_takes_its_secrets_along(grpc_stub: object, make_caller: Make,
                                                  secrets_service: Built) -> None:
    doomed, other = make_caller(), make_caller()
    gone = [create(grpc_stub, doomed).name for _ in range(2)]
    kept = create(grpc_stub, other).name
    event = event_pb2.Event(id=unique("event"), type="oih.iam.tenant.deleted", source="oih-iam")
    with transaction(secrets_service.engine) as session:
        events.on_tenant_deleted(session, event, iam_events.TenantChanged(tenant=doomed.tenant))
    for name in gone:
        with pytest.raises(grpc.RpcError) as caught:
            grpc_stub.GetSecret(pb.GetSecretRequest(name=name), metadata=doomed.md)  # type: ignore[attr-defined]
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert grpc_stub.GetSecret(pb.GetSecretRequest(name=kept), metadata=other.md).name == kept  # type: ignore[attr-defined]
    with Session(secrets_service.engine) as session:
        deleted = session.exec(select(OutboxEvent).where(
            col(OutboxEvent.event_type) == "oih.secret.deleted",
            col(OutboxEvent.tenant) == doomed.tenant)).all()
    assert sorted(e.subject for e in deleted) == sorted(gone)
