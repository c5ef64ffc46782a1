"""IAM over real gRPC with the shared interceptors: tokens, tenants, grants, isolation."""

from __future__ import annotations

import base64
import json
import time
import uuid

import grpc
import jwt
import pytest
from google.protobuf import field_mask_pb2

from oih.iam.v1 import iam_pb2, iam_pb2_grpc
from tests.oih_iam.conftest import bearer
from tests.support.grpc_errors import field_violations, reason

Stub = iam_pb2_grpc.IamServiceStub


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_tenant(stub: Stub, admin: str) -> str:
    tenant = stub.CreateTenant(
        iam_pb2.CreateTenantRequest(tenant=iam_pb2.Tenant(display_name=unique("acme"))),
        metadata=bearer(admin),
    )
    return str(tenant.name)


def make_user(stub: Stub, token: str, *, tenant: str = "", roles: tuple[str, ...] = (),
              permissions: tuple[str, ...] = ()) -> tuple[str, str, str]:
    """Create a user and log it in: (name, username, token)."""
    username = f"{unique('user')}@example.com"
    user = stub.CreateUser(
        iam_pb2.CreateUserRequest(
            user=iam_pb2.User(username=username, tenant=tenant, roles=roles,
                              permissions=permissions),
            password="correct horse battery",
        ),
        metadata=bearer(token),
    )
    login = stub.Login(iam_pb2.LoginRequest(username=username, password="correct horse battery"))
    return user.name, username, login.access_token


@pytest.fixture(scope="module")
def tenant_admin(grpc_stub: Stub, admin_token: str) -> tuple[str, str, str]:
    """(tenant, user name, token) of a tenant administrator of a fresh tenant."""
    tenant = make_tenant(grpc_stub, admin_token)
    name, _, token = make_user(grpc_stub, admin_token, tenant=tenant,
                               roles=("roles/tenant-admin",))
    return tenant, name, token


def test_login_gives_a_verifiable_rs256_token_with_the_documented_claims(
        grpc_stub: Stub, admin_token: str) -> None:
    jwks = json.loads(grpc_stub.GetJwks(iam_pb2.GetJwksRequest()).data)
    header = jwt.get_unverified_header(admin_token)
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(admin_token, jwt.PyJWK.from_dict(key).key, algorithms=["RS256"],
                        audience="oih-platform", issuer="oih-iam")
    assert header["alg"] == "RS256"
    assert claims["sub"].startswith("users/")
    assert claims["tenant"] == "tenants/platform"
    assert "all" in claims["permissions"]
    assert {"exp", "iat", "jti"} <= claims.keys()


def test_wrong_password_is_unauthenticated_and_repeated_failures_lock(
        grpc_stub: Stub, admin_token: str) -> None:
    _, username, _ = make_user(grpc_stub, admin_token)
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as failed:
            grpc_stub.Login(iam_pb2.LoginRequest(username=username, password="wrong password!"))
        assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as locked:
        grpc_stub.Login(iam_pb2.LoginRequest(username=username, password="correct horse battery"))
    assert locked.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(locked.value) == "ACCOUNT_LOCKED"


def test_unknown_user_and_wrong_password_answer_the_same(grpc_stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.Login(iam_pb2.LoginRequest(username="nobody@example.com", password="whatever1234"))
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert failed.value.details() == "wrong username or password"


def test_lockout_answers_alike_for_existing_and_unknown_usernames(
        grpc_stub: Stub, admin_token: str) -> None:
    """The lockout must not tell which usernames exist: the same codes, in the same order,
    with the same messages, whether the user exists or not."""
    _, existing, _ = make_user(grpc_stub, admin_token)
    unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.com"

    def answers(username: str) -> list[tuple[str, str]]:
        seen = []
        for _ in range(6):
            with pytest.raises(grpc.RpcError) as failed:
                grpc_stub.Login(iam_pb2.LoginRequest(username=username, password="wrong guess!"))
            seen.append((failed.value.code().name, str(failed.value.details())))
        return seen

    from_existing = answers(existing)
    assert from_existing == answers(unknown)
    assert [code for code, _ in from_existing] == ["UNAUTHENTICATED"] * 3 + [
        "RESOURCE_EXHAUSTED"] * 3


def test_example_b_tenant_admin_creates_a_service_account_that_calls_users_me(
        grpc_stub: Stub, tenant_admin: tuple[str, str, str]) -> None:
    tenant, _, token = tenant_admin
    account = grpc_stub.CreateServiceAccount(
        iam_pb2.CreateServiceAccountRequest(service_account=iam_pb2.ServiceAccount(
            display_name="billing sync", roles=["roles/service-account"])),
        metadata=bearer(token),
    )
    assert account.tenant == tenant
    assert account.client_secret.startswith("oihs_")
    # The secret is shown once: reading the account again does not reveal it.
    again = grpc_stub.GetServiceAccount(iam_pb2.GetServiceAccountRequest(name=account.name),
                                        metadata=bearer(token))
    assert again.client_secret == ""
    exchanged = grpc_stub.ExchangeToken(iam_pb2.ExchangeTokenRequest(
        client_id=account.client_id, client_secret=account.client_secret))
    me = grpc_stub.GetCurrentPrincipal(iam_pb2.GetCurrentPrincipalRequest(),
                                       metadata=bearer(exchanged.access_token))
    assert me.name == account.name
    assert me.type == iam_pb2.PRINCIPAL_TYPE_SERVICE_ACCOUNT
    assert me.tenant == tenant
    assert "flows.execute" in me.permissions


def test_reset_secret_refuses_old_secret_and_old_tokens(
        grpc_stub: Stub, tenant_admin: tuple[str, str, str]) -> None:
    _, _, token = tenant_admin
    account = grpc_stub.CreateServiceAccount(
        iam_pb2.CreateServiceAccountRequest(service_account=iam_pb2.ServiceAccount(
            display_name="rotating", roles=["roles/service-account"])),
        metadata=bearer(token))
    old_token = grpc_stub.ExchangeToken(iam_pb2.ExchangeTokenRequest(
        client_id=account.client_id, client_secret=account.client_secret)).access_token
    reset = grpc_stub.ResetServiceAccountSecret(
        iam_pb2.ResetServiceAccountSecretRequest(name=account.name), metadata=bearer(token))
    with pytest.raises(grpc.RpcError) as refused:
        grpc_stub.ExchangeToken(iam_pb2.ExchangeTokenRequest(
            client_id=account.client_id, client_secret=account.client_secret))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as revoked:
        grpc_stub.GetCurrentPrincipal(iam_pb2.GetCurrentPrincipalRequest(),
                                      metadata=bearer(old_token))
    assert reason(revoked.value) == "TOKEN_REVOKED"
    fresh = grpc_stub.ExchangeToken(iam_pb2.ExchangeTokenRequest(
        client_id=account.client_id, client_secret=reset.client_secret)).access_token
    assert grpc_stub.GetCurrentPrincipal(iam_pb2.GetCurrentPrincipalRequest(),
                                         metadata=bearer(fresh)).name == account.name


def test_call_without_token_is_unauthenticated(grpc_stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.ListUsers(iam_pb2.ListUsersRequest())
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_missing_permission_is_permission_denied(
        grpc_stub: Stub, admin_token: str, tenant_admin: tuple[str, str, str]) -> None:
    _, _, token = tenant_admin
    _, _, integrator = make_user(grpc_stub, token, roles=("roles/integrator",))
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.CreateUser(iam_pb2.CreateUserRequest(
            user=iam_pb2.User(username="x@example.com"), password="long enough password"),
            metadata=bearer(integrator))
    assert failed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason(failed.value) == "MISSING_PERMISSION"


def test_tenant_admin_reading_another_tenants_user_is_not_found(
        grpc_stub: Stub, admin_token: str, tenant_admin: tuple[str, str, str]) -> None:
    other_tenant = make_tenant(grpc_stub, admin_token)
    stranger, _, _ = make_user(grpc_stub, admin_token, tenant=other_tenant)
    _, _, token = tenant_admin
    for call in (
        lambda: grpc_stub.GetUser(iam_pb2.GetUserRequest(name=stranger), metadata=bearer(token)),
        lambda: grpc_stub.DeleteUser(iam_pb2.DeleteUserRequest(name=stranger),
                                     metadata=bearer(token)),
        lambda: grpc_stub.GetTenant(iam_pb2.GetTenantRequest(name=other_tenant),
                                    metadata=bearer(token)),
    ):
        with pytest.raises(grpc.RpcError) as failed:
            call()
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    listed = grpc_stub.ListUsers(iam_pb2.ListUsersRequest(page_size=1000), metadata=bearer(token))
    assert stranger not in {u.name for u in listed.users}
    with pytest.raises(grpc.RpcError) as placed:
        make_user(grpc_stub, token, tenant=other_tenant)
    assert placed.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("roles", "permissions"),
    [((), ("all",)), ((), ("iam.tenant.create",)), (("roles/platform-admin",), ())],
)
def test_tenant_admin_cannot_grant_what_it_does_not_hold(
        grpc_stub: Stub, tenant_admin: tuple[str, str, str], roles: tuple[str, ...],
        permissions: tuple[str, ...]) -> None:
    _, own_name, token = tenant_admin
    with pytest.raises(grpc.RpcError) as to_new_user:
        make_user(grpc_stub, token, roles=roles, permissions=permissions)
    assert to_new_user.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as to_itself:
        grpc_stub.UpdateUser(iam_pb2.UpdateUserRequest(
            user=iam_pb2.User(name=own_name, roles=["roles/tenant-admin", *roles],
                              permissions=permissions),
            update_mask=field_mask_pb2.FieldMask(paths=["roles", "permissions"])),
            metadata=bearer(token))
    assert to_itself.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as to_account:
        grpc_stub.CreateServiceAccount(iam_pb2.CreateServiceAccountRequest(
            service_account=iam_pb2.ServiceAccount(display_name="greedy", roles=roles,
                                                   permissions=permissions)),
            metadata=bearer(token))
    assert to_account.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_granting_a_role_of_another_tenant_is_refused(
        grpc_stub: Stub, admin_token: str, tenant_admin: tuple[str, str, str]) -> None:
    other_tenant = make_tenant(grpc_stub, admin_token)
    _, _, other_admin = make_user(grpc_stub, admin_token, tenant=other_tenant,
                                  roles=("roles/tenant-admin",))
    foreign_role = grpc_stub.CreateRole(iam_pb2.CreateRoleRequest(
        role=iam_pb2.Role(display_name="readers", permissions=["flows.read"])),
        metadata=bearer(other_admin))
    _, _, token = tenant_admin
    with pytest.raises(grpc.RpcError) as failed:
        make_user(grpc_stub, token, roles=(foreign_role.name,))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND


def test_tenant_role_cannot_hold_restricted_permissions(
        grpc_stub: Stub, tenant_admin: tuple[str, str, str]) -> None:
    _, _, token = tenant_admin
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.CreateRole(iam_pb2.CreateRoleRequest(
            role=iam_pb2.Role(display_name="sneaky", permissions=["iam.tenant.delete"])),
            metadata=bearer(token))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(failed.value) == ["role.permissions"]


@pytest.mark.parametrize(
    ("request_message", "fields"),
    [
        (iam_pb2.CreateUserRequest(), ["user", "password"]),
        (iam_pb2.CreateUserRequest(user=iam_pb2.User(display_name="x"), password="p"),
         ["user.username"]),
        (iam_pb2.CreateUserRequest(user=iam_pb2.User(username="no-at-sign"),
                                   password="long enough password"), ["user.username"]),
        (iam_pb2.CreateUserRequest(user=iam_pb2.User(username="a@b.c"), password="short"),
         ["password"]),
        (iam_pb2.CreateUserRequest(user=iam_pb2.User(username="a@b.c", roles=["admins"]),
                                   password="long enough password"), ["user.roles[0]"]),
        (iam_pb2.CreateUserRequest(user=iam_pb2.User(username="a@b.c", permissions=["flying"]),
                                   password="long enough password"), ["user.permissions"]),
    ],
)
def test_bad_user_input_names_the_field(grpc_stub: Stub, admin_token: str,
                                        request_message: iam_pb2.CreateUserRequest,
                                        fields: list[str]) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.CreateUser(request_message, metadata=bearer(admin_token))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(failed.value) == fields


def test_malformed_resource_name_names_the_field(grpc_stub: Stub, admin_token: str) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.GetUser(iam_pb2.GetUserRequest(name="flows/x"), metadata=bearer(admin_token))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(failed.value) == ["name"]


def test_disabling_a_user_refuses_its_token_at_once(grpc_stub: Stub, admin_token: str) -> None:
    name, username, token = make_user(grpc_stub, admin_token, roles=("roles/integrator",))
    grpc_stub.GetCurrentPrincipal(iam_pb2.GetCurrentPrincipalRequest(), metadata=bearer(token))
    grpc_stub.UpdateUser(iam_pb2.UpdateUserRequest(
        user=iam_pb2.User(name=name, state=iam_pb2.STATE_DISABLED)), metadata=bearer(admin_token))
    with pytest.raises(grpc.RpcError) as refused:
        grpc_stub.GetCurrentPrincipal(iam_pb2.GetCurrentPrincipalRequest(),
                                      metadata=bearer(token))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as login:
        grpc_stub.Login(iam_pb2.LoginRequest(username=username, password="correct horse battery"))
    assert login.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_revoked_token_is_refused_and_introspects_inactive(grpc_stub: Stub,
                                                           admin_token: str) -> None:
    _, _, token = make_user(grpc_stub, admin_token, roles=("roles/integrator",))
    grpc_stub.RevokeToken(iam_pb2.RevokeTokenRequest(), metadata=bearer(token))
    info = grpc_stub.IntrospectToken(iam_pb2.IntrospectTokenRequest(token=token),
                                     metadata=bearer(admin_token))
    assert info.active is False
    assert grpc_stub.IntrospectToken(iam_pb2.IntrospectTokenRequest(token=admin_token),
                                     metadata=bearer(admin_token)).active is True


def test_revoking_a_token_that_is_not_valid_changes_nothing(grpc_stub: Stub,
                                                            admin_token: str) -> None:
    """RFC 7009: no error (a 401 would say the caller's own token is bad)."""
    _, _, token = make_user(grpc_stub, admin_token, roles=("roles/integrator",))
    for invalid in ("not a token", token[:-4] + "AAAA"):
        grpc_stub.RevokeToken(iam_pb2.RevokeTokenRequest(token=invalid), metadata=bearer(token))
    assert grpc_stub.GetCurrentPrincipal(iam_pb2.GetCurrentPrincipalRequest(),
                                         metadata=bearer(token)).name


def test_key_rotation_keeps_old_tokens_valid_and_publishes_both_keys(
        grpc_stub: Stub, admin_token: str) -> None:
    from tests.oih_iam.conftest import ADMIN, ADMIN_PASSWORD

    old_kid = jwt.get_unverified_header(admin_token)["kid"]
    rotated = grpc_stub.RotateSigningKey(iam_pb2.RotateSigningKeyRequest(),
                                         metadata=bearer(admin_token))
    assert rotated.key_id != old_kid
    kids = {k["kid"] for k in json.loads(grpc_stub.GetJwks(iam_pb2.GetJwksRequest()).data)["keys"]}
    assert {old_kid, rotated.key_id} <= kids
    grpc_stub.GetCurrentPrincipal(iam_pb2.GetCurrentPrincipalRequest(),
                                  metadata=bearer(admin_token))
    # Pre-announced: the new key signs only after verifiers had time to fetch it.
    assert rotated.start_time.ToSeconds() - rotated.create_time.ToSeconds() >= 59
    fresh = grpc_stub.Login(iam_pb2.LoginRequest(username=ADMIN, password=ADMIN_PASSWORD))
    assert jwt.get_unverified_header(fresh.access_token)["kid"] == old_kid


def test_expired_token_is_refused(grpc_stub: Stub, iam_service: object) -> None:
    issuer = iam_service.iam.issuer  # type: ignore[attr-defined]
    kid, key = issuer.keys.signing_key()
    now = int(time.time())
    token = jwt.encode({"iss": "oih-iam", "aud": "oih-platform", "sub": "users/x",
                        "tenant": "tenants/platform", "permissions": ["all"], "iat": now - 120,
                        "exp": now - 60, "jti": "x"}, key, algorithm="RS256",
                       headers={"kid": kid})
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.ListTenants(iam_pb2.ListTenantsRequest(), metadata=bearer(token))
    assert reason(failed.value) == "TOKEN_EXPIRED"


def test_list_users_pages_through_all_users(grpc_stub: Stub, admin_token: str) -> None:
    tenant = make_tenant(grpc_stub, admin_token)
    created = {make_user(grpc_stub, admin_token, tenant=tenant)[0] for _ in range(5)}
    seen: list[str] = []
    token = ""
    while True:
        page = grpc_stub.ListUsers(iam_pb2.ListUsersRequest(page_size=2, page_token=token,
                                                            tenant=tenant),
                                   metadata=bearer(admin_token))
        seen += [u.name for u in page.users]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(created)


def test_service_token_is_attached_to_calls_and_renewed_before_it_expires(
        grpc_stub: Stub, grpc_addr: str, tenant_admin: tuple[str, str, str]) -> None:
    from oih_runtime.clients import ServiceToken, authenticated_channel

    _, _, token = tenant_admin
    account = grpc_stub.CreateServiceAccount(iam_pb2.CreateServiceAccountRequest(
        service_account=iam_pb2.ServiceAccount(display_name="robot",
                                               roles=["roles/service-account"])),
        metadata=bearer(token))
    now = [1000.0]
    service_token = ServiceToken(grpc_stub, account.client_id, account.client_secret,
                                 clock=lambda: now[0])
    first = service_token.get()
    now[0] += 600  # 10 of 15 minutes: still fresh
    assert service_token.get() == first
    now[0] += 200  # less than a fifth of the lifetime left: renewed before expiry
    renewed = service_token.get()
    assert renewed != first
    assert jwt.decode(renewed, options={"verify_signature": False})["sub"] == account.name

    with authenticated_channel(grpc_addr, service_token.get) as channel:
        me = iam_pb2_grpc.IamServiceStub(channel).GetCurrentPrincipal(
            iam_pb2.GetCurrentPrincipalRequest())
    assert me.name == account.name


@pytest.mark.parametrize("offset", ["1e400", str(2**70), "-1", '"x"', "[]"])
def test_forged_page_token_is_invalid_argument_not_internal(
        grpc_stub: Stub, admin_token: str, offset: str) -> None:
    raw = f'{{"o": {offset}, "f": "users:"}}'
    forged = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
    with pytest.raises(grpc.RpcError) as failed:
        grpc_stub.ListUsers(iam_pb2.ListUsersRequest(page_token=forged),
                            metadata=bearer(admin_token))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(failed.value) == ["page_token"]


def _refused(stub: Stub, token: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetCurrentPrincipal(iam_pb2.GetCurrentPrincipalRequest(), metadata=bearer(token))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return refused.value


def test_setting_a_new_password_refuses_the_tokens_issued_before(
        grpc_stub: Stub, admin_token: str) -> None:
    name, username, token = make_user(grpc_stub, admin_token, roles=("roles/integrator",))
    grpc_stub.UpdateUser(iam_pb2.UpdateUserRequest(user=iam_pb2.User(name=name),
                                                   password="a brand new password"),
                         metadata=bearer(admin_token))
    assert reason(_refused(grpc_stub, token)) == "TOKEN_REVOKED"
    fresh = grpc_stub.Login(iam_pb2.LoginRequest(username=username,
                                                 password="a brand new password")).access_token
    assert grpc_stub.GetCurrentPrincipal(iam_pb2.GetCurrentPrincipalRequest(),
                                         metadata=bearer(fresh)).name == name


def test_disabling_a_tenant_refuses_the_tokens_of_its_users_and_accounts_at_once(
        grpc_stub: Stub, admin_token: str) -> None:
    tenant = make_tenant(grpc_stub, admin_token)
    _, _, user_token = make_user(grpc_stub, admin_token, tenant=tenant,
                                 roles=("roles/tenant-admin",))
    account = grpc_stub.CreateServiceAccount(iam_pb2.CreateServiceAccountRequest(
        service_account=iam_pb2.ServiceAccount(display_name="robot",
                                               roles=["roles/service-account"])),
        metadata=bearer(user_token))
    account_token = grpc_stub.ExchangeToken(iam_pb2.ExchangeTokenRequest(
        client_id=account.client_id, client_secret=account.client_secret)).access_token
    grpc_stub.UpdateTenant(iam_pb2.UpdateTenantRequest(
        tenant=iam_pb2.Tenant(name=tenant, state=iam_pb2.STATE_DISABLED)),
        metadata=bearer(admin_token))
    assert reason(_refused(grpc_stub, user_token)) == "TOKEN_REVOKED"
    assert reason(_refused(grpc_stub, account_token)) == "TOKEN_REVOKED"


def test_tenant_admin_cannot_take_over_a_principal_holding_more_than_itself(
        grpc_stub: Stub, admin_token: str, tenant_admin: tuple[str, str, str]) -> None:
    tenant, _, token = tenant_admin
    powerful, _, _ = make_user(grpc_stub, admin_token, tenant=tenant,
                               permissions=("iam.tenant.create",))
    with pytest.raises(grpc.RpcError) as password:
        grpc_stub.UpdateUser(iam_pb2.UpdateUserRequest(user=iam_pb2.User(name=powerful),
                                                       password="i know this one now"),
                             metadata=bearer(token))
    assert password.value.code() == grpc.StatusCode.PERMISSION_DENIED
    account = grpc_stub.CreateServiceAccount(iam_pb2.CreateServiceAccountRequest(
        service_account=iam_pb2.ServiceAccount(display_name="powerful", tenant=tenant,
                                               permissions=["iam.token.introspect"])),
        metadata=bearer(admin_token))
    with pytest.raises(grpc.RpcError) as secret:
        grpc_stub.ResetServiceAccountSecret(
            iam_pb2.ResetServiceAccountSecretRequest(name=account.name), metadata=bearer(token))
    assert secret.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_access_log_names_the_caller(grpc_stub: Stub, admin_token: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    me = grpc_stub.GetCurrentPrincipal(iam_pb2.GetCurrentPrincipalRequest(),
                                       metadata=bearer(admin_token))
    with caplog.at_level("INFO", logger="oih.rpc"):
        grpc_stub.ListTenants(iam_pb2.ListTenantsRequest(), metadata=bearer(admin_token))
    logged = [r for r in caplog.records
              if r.getMessage() == "rpc" and r.__dict__["method"].endswith("/ListTenants")]
    assert [r.__dict__["subject"] for r in logged] == [me.name]


def test_taking_a_permission_away_refuses_tokens_that_still_carry_it(
        grpc_stub: Stub, tenant_admin: tuple[str, str, str]) -> None:
    _, _, admin = tenant_admin
    role = grpc_stub.CreateRole(iam_pb2.CreateRoleRequest(role=iam_pb2.Role(
        display_name=unique("editors"), permissions=["flows.read", "flows.write"])),
        metadata=bearer(admin))
    role_holder, _, role_token = make_user(grpc_stub, admin, roles=(role.name,))
    direct_holder, _, direct_token = make_user(grpc_stub, admin, permissions=("flows.read",))
    untouched, _, untouched_token = make_user(grpc_stub, admin, permissions=("flows.read",))

    grpc_stub.UpdateRole(iam_pb2.UpdateRoleRequest(
        role=iam_pb2.Role(name=role.name, permissions=["flows.read"]),
        update_mask=field_mask_pb2.FieldMask(paths=["permissions"])), metadata=bearer(admin))
    grpc_stub.UpdateUser(iam_pb2.UpdateUserRequest(
        user=iam_pb2.User(name=direct_holder),
        update_mask=field_mask_pb2.FieldMask(paths=["permissions"])), metadata=bearer(admin))

    me = iam_pb2.GetCurrentPrincipalRequest()
    for token in (role_token, direct_token):
        with pytest.raises(grpc.RpcError) as refused:
            grpc_stub.GetCurrentPrincipal(me, metadata=bearer(token))
        assert reason(refused.value) == "TOKEN_REVOKED"
    assert grpc_stub.GetCurrentPrincipal(me, metadata=bearer(untouched_token)).name == untouched
    assert role_holder != untouched


def test_deleted_role_leaves_its_holders_whose_grants_can_still_change(
        grpc_stub: Stub, tenant_admin: tuple[str, str, str]) -> None:
    _, _, admin = tenant_admin
    role = grpc_stub.CreateRole(iam_pb2.CreateRoleRequest(role=iam_pb2.Role(
        display_name=unique("doomed"), permissions=["flows.read"])), metadata=bearer(admin))
    holder, _, holder_token = make_user(grpc_stub, admin, roles=(role.name, "roles/integrator"))
    account = grpc_stub.CreateServiceAccount(iam_pb2.CreateServiceAccountRequest(
        service_account=iam_pb2.ServiceAccount(display_name="doomed holder",
                                               roles=[role.name])), metadata=bearer(admin))

    grpc_stub.DeleteRole(iam_pb2.DeleteRoleRequest(name=role.name), metadata=bearer(admin))

    user = grpc_stub.GetUser(iam_pb2.GetUserRequest(name=holder), metadata=bearer(admin))
    assert list(user.roles) == ["roles/integrator"]
    kept = grpc_stub.GetServiceAccount(iam_pb2.GetServiceAccountRequest(
        name=account.name), metadata=bearer(admin))
    assert list(kept.roles) == []
    # The holders' grants can be changed again (a dangling role made this ROLE_NOT_FOUND).
    changed = grpc_stub.UpdateUser(iam_pb2.UpdateUserRequest(
        user=iam_pb2.User(name=holder, permissions=["flows.read"]),
        update_mask=field_mask_pb2.FieldMask(paths=["permissions"])), metadata=bearer(admin))
    assert list(changed.permissions) == ["flows.read"]
    with pytest.raises(grpc.RpcError) as refused:  # it carried the deleted role's permissions
        grpc_stub.GetCurrentPrincipal(iam_pb2.GetCurrentPrincipalRequest(),
                                      metadata=bearer(holder_token))
    assert reason(refused.value) == "TOKEN_REVOKED"
