"""Example (b) and the attack cases, through REST and gRPC via the real Envoy, against the real
IAM process."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import time
import uuid
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from oih.iam.v1 import iam_pb2, iam_pb2_grpc
from oih_cli.platform import Platform
from oih_iam.keys import private_key
from oih_iam.models import SigningKeyRow
from oih_runtime import crypto
from tests.e2e.conftest import PASSWORD, auth, create_tenant_with_admin, unique


@pytest.fixture(scope="module")
def tenant_admin(rest: httpx.Client, admin_token: str) -> tuple[str, str, str]:
    return create_tenant_with_admin(rest, admin_token)


def test_example_b_service_account_created_by_a_tenant_admin_calls_users_me(
        rest: httpx.Client, tenant_admin: tuple[str, str, str]) -> None:
    tenant, _, token = tenant_admin
    created = rest.post("/v1/service-accounts", headers=auth(token),
                        json={"display_name": "crm sync", "roles": ["roles/service-account"]})
    assert created.status_code == 200, created.text
    account = created.json()
    exchanged = rest.post("/v1/tokens:exchange", json={
        "client_id": account["client_id"], "client_secret": account["client_secret"]})
    assert exchanged.status_code == 200, exchanged.text
    assert exchanged.json()["token_type"] == "Bearer"
    me = rest.get("/v1/users/me", headers=auth(exchanged.json()["access_token"]))
    assert me.status_code == 200, me.text
    assert me.json()["name"] == account["name"]
    assert me.json()["tenant"] == tenant
    assert me.json()["type"] == "PRINCIPAL_TYPE_SERVICE_ACCOUNT"


def test_jwks_is_public_and_lists_the_signing_key(rest: httpx.Client, admin_token: str) -> None:
    reply = rest.get("/.well-known/jwks.json")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/json")
    kids = {key["kid"] for key in reply.json()["keys"]}
    assert jwt.get_unverified_header(admin_token)["kid"] in kids


# ---------------------------------------------------------------- forged and broken tokens


def iam_signing_key(platform: Platform) -> tuple[str, Any]:
    """IAM's real private key, read from its database and opened with its master key file (to
    forge otherwise-valid tokens)."""
    with sqlite3.connect(platform.data_dir / "iam.db") as db:
        kid, sealed = db.execute(
            "SELECT kid, private_pem FROM iam_signing_key WHERE retire_time IS NULL").fetchone()
    assert crypto.is_sealed(sealed)  # never in clear at rest
    keyring = crypto.Keyring(path=platform.data_dir / "iam-master-key")
    return kid, private_key(keyring, SigningKeyRow(kid=kid, private_pem=sealed))


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": "oih-iam", "aud": "oih-platform", "sub": "users/intruder",
            "tenant": "tenants/platform", "permissions": ["all"], "typ": "user",
            "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
    return {**base, **overrides}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forged_tokens(platform: Platform) -> dict[str, str]:
    kid, key = iam_signing_key(platform)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs256_header = b64(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}).encode())
    hs256_body = b64(json.dumps(claims()).encode())
    hs256_signature = b64(hmac.new(public_pem, f"{hs256_header}.{hs256_body}".encode(),
                                   hashlib.sha256).digest())
    return {
        "expired": jwt.encode(claims(iat=int(time.time()) - 600, exp=int(time.time()) - 300),
                              key, algorithm="RS256", headers={"kid": kid}),
        "other key": jwt.encode(claims(), other, algorithm="RS256", headers={"kid": kid}),
        "alg none": b64(json.dumps({"alg": "none", "kid": kid}).encode()) + "."
        + b64(json.dumps(claims()).encode()) + ".",
        "hs256 with public key": f"{hs256_header}.{hs256_body}.{hs256_signature}",
        "wrong audience": jwt.encode(claims(aud="someone-else"), key, algorithm="RS256",
                                     headers={"kid": kid}),
        "garbage": "not.a.token",
    }


@pytest.mark.parametrize("kind", ["expired", "other key", "alg none", "hs256 with public key",
                                  "wrong audience", "garbage"])
def test_forged_or_broken_token_is_refused_with_json_401(
        rest: httpx.Client, platform: Platform, kind: str) -> None:
    token = forged_tokens(platform)[kind]
    reply = rest.get("/v1/users/me", headers=auth(token))
    assert reply.status_code == 401, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["message"]


@pytest.mark.parametrize("kind", ["expired", "other key", "alg none", "hs256 with public key",
                                  "wrong audience"])
def test_forged_token_sent_straight_to_the_service_port_is_refused(
        platform: Platform, kind: str) -> None:
    token = forged_tokens(platform)[kind]
    with grpc.insecure_channel(platform.address("iam")) as channel, \
            pytest.raises(grpc.RpcError) as refused:
        iam_pb2_grpc.IamServiceStub(channel).ListTenants(
            iam_pb2.ListTenantsRequest(), metadata=(("authorization", f"Bearer {token}"),))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_no_token_is_401_json(rest: httpx.Client) -> None:
    reply = rest.get("/v1/users/me")
    assert reply.status_code == 401
    assert reply.json()["message"]


def test_token_in_the_query_string_is_refused(rest: httpx.Client, admin_token: str) -> None:
    reply = rest.get("/v1/users/me", params={"access_token": admin_token})
    assert reply.status_code in (400, 401)


def test_forged_claims_header_gives_no_access(rest: httpx.Client) -> None:
    forged = b64(json.dumps(claims()).encode())
    reply = rest.get("/v1/tenants", headers={"x-oih-jwt-payload": forged})
    assert reply.status_code == 401


def test_direct_grpc_to_the_service_port_without_token_is_unauthenticated(
        platform: Platform) -> None:
    with grpc.insecure_channel(platform.address("iam")) as channel, \
            pytest.raises(grpc.RpcError) as refused:
        iam_pb2_grpc.IamServiceStub(channel).ListUsers(iam_pb2.ListUsersRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_native_grpc_through_envoy_needs_a_token(platform: Platform, admin_token: str) -> None:
    with grpc.insecure_channel(platform.gateway_url.removeprefix("http://")) as channel:
        stub = iam_pb2_grpc.IamServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListTenants(iam_pb2.ListTenantsRequest())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        listed = stub.ListTenants(iam_pb2.ListTenantsRequest(),
                                  metadata=(("authorization", f"Bearer {admin_token}"),))
    assert "tenants/platform" in {t.name for t in listed.tenants}


# ---------------------------------------------------------------- tenant isolation and grants


def test_tenant_admin_reading_another_tenants_user_is_404(
        rest: httpx.Client, admin_token: str, tenant_admin: tuple[str, str, str]) -> None:
    _, stranger, _ = create_tenant_with_admin(rest, admin_token)
    _, _, token = tenant_admin
    reply = rest.get(f"/v1/{stranger}", headers=auth(token))
    assert reply.status_code == 404
    assert reply.json()["message"] == f"user {stranger!r} not found"


@pytest.mark.parametrize("grant", [{"permissions": ["all"]},
                                   {"permissions": ["iam.tenant.create"]},
                                   {"roles": ["roles/tenant-admin", "roles/platform-admin"]}])
def test_tenant_admin_cannot_grant_itself_more(
        rest: httpx.Client, tenant_admin: tuple[str, str, str], grant: dict[str, list[str]]
) -> None:
    _, own, token = tenant_admin
    reply = rest.patch(f"/v1/{own}", headers=auth(token),
                       json={"user": grant, "update_mask": ",".join(grant)})
    assert reply.status_code == 403, reply.text


def test_tenant_admin_cannot_create_a_service_account_with_more_than_it_holds(
        rest: httpx.Client, tenant_admin: tuple[str, str, str]) -> None:
    _, _, token = tenant_admin
    reply = rest.post("/v1/service-accounts", headers=auth(token),
                      json={"display_name": "greedy", "permissions": ["iam.tenant.delete"]})
    assert reply.status_code == 403, reply.text


def test_role_of_another_tenant_cannot_be_granted(
        rest: httpx.Client, admin_token: str, tenant_admin: tuple[str, str, str]) -> None:
    _, _, other_admin = create_tenant_with_admin(rest, admin_token)
    role = rest.post("/v1/roles", headers=auth(other_admin),
                     json={"display_name": "readers", "permissions": ["flows.read"]})
    assert role.status_code == 200, role.text
    _, _, token = tenant_admin
    reply = rest.post("/v1/users", headers=auth(token), json={
        "user": {"username": f"{unique('x')}@acme.example", "roles": [role.json()["name"]]},
        "password": PASSWORD})
    assert reply.status_code == 404, reply.text


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"password": PASSWORD}, "user"),
        ({"user": {"display_name": "no username"}, "password": PASSWORD}, "user.username"),
        ({"user": {"username": "short@pw.example"}, "password": "short"}, "password"),
    ],
)
def test_missing_or_bad_fields_are_400_naming_the_field(
        rest: httpx.Client, admin_token: str, body: dict[str, Any], named: str) -> None:
    reply = rest.post("/v1/users", json=body, headers=auth(admin_token))
    assert reply.status_code == 400, reply.text
    details = reply.json()["details"]
    violations = [v["field"] for d in details for v in d.get("field_violations", [])]
    assert named in violations


@pytest.mark.parametrize(
    "raw",
    [b'{"username": ', b'{"username": 5, "password": ["x"]}', b"[1, 2, 3]", b"\xff\xfe"],
    ids=["malformed", "wrong types", "not an object", "not utf-8"],
)
def test_unparsable_bodies_are_400_json(rest: httpx.Client, raw: bytes) -> None:
    reply = rest.post("/v1/login", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.json()["message"]


def test_oversized_body_is_refused_with_json_and_never_500(rest: httpx.Client) -> None:
    huge = {"username": "x" * (2 * 1024 * 1024), "password": "y"}
    reply = rest.post("/v1/login", json=huge)
    assert reply.status_code == 413
    assert reply.json()["message"]


def test_unknown_route_is_404_json(rest: httpx.Client, admin_token: str) -> None:
    reply = rest.get("/v1/nothing-here", headers=auth(admin_token))
    assert reply.status_code == 404
    assert reply.headers["content-type"].startswith("application/json")


def test_services_serve_prometheus_metrics_of_their_rpcs(rest: httpx.Client) -> None:
    from tests.e2e.conftest import METRICS_PORTS

    rest.post("/v1/login", json={"username": "nobody@e2e.test", "password": "wrong password"})
    scraped = httpx.get(f"http://127.0.0.1:{METRICS_PORTS['iam']}/metrics").text
    assert 'oih_rpc_requests_total{code="UNAUTHENTICATED",method="/oih.iam.v1.IamService/Login"}' \
        in scraped
    assert "oih_rpc_duration_seconds_bucket" in scraped
    for service in ("components", "flows", "orchestrator"):
        assert httpx.get(f"http://127.0.0.1:{METRICS_PORTS[service]}/metrics").status_code == 200
