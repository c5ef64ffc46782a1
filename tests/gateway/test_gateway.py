"""The Envoy gateway end to end: real Envoy, real gRPC servers, real HTTP.

An IamService test double (GetJwks, GetCurrentPrincipal, Login) runs on a free port; the gateway
is rendered from the real descriptor set with IAM pointing at it and every other service at a
closed port.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api import httpbody_pb2

from oih.iam.v1 import iam_pb2, iam_pb2_grpc
from oih_gateway import layout
from oih_gateway.cli import render_default
from oih_gateway.docs import write_docs
from oih_gateway.envoy import EnvoyProcess, validate
from oih_gateway.render import body_array_fields, dumps_envoy_config, read_rpcs, template_regex
from tests.gateway.conftest import (
    AUDIENCE,
    DESCRIPTOR_SET,
    ISSUER,
    all_upstreams,
    decode_payload_header,
    start_gateway,
)

IAM = "oih.iam.v1.IamService"
KID = "test-key-1"
PAYLOAD_HEADER = "x-oih-jwt-payload"
MAX_REQUEST_BYTES = 64 * 1024


# --------------------------------------------------------------------------------------------
# Keys and tokens


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


SIGNING_KEY = _new_key()
OTHER_KEY = _new_key()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": "users/alice",
        "tenant": "tenants/acme",
        "roles": ["roles/integrator"],
        "permissions": ["flows.read"],
        "typ": "user",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    values.update(overrides)
    return values


def rs256(key: rsa.RSAPrivateKey = SIGNING_KEY, kid: str = KID, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key, algorithm="RS256", headers={"kid": kid})


def unsigned_token(header: dict[str, Any], payload: dict[str, Any], signer: Any = None) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = signer(signing_input.encode()) if signer else b""
    return f"{signing_input}.{_b64(signature)}"


def jwks() -> dict[str, Any]:
    key = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(SIGNING_KEY.public_key()))
    key.update({"kid": KID, "alg": "RS256", "use": "sig"})
    return {"keys": [key]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------------------------
# The IAM test double


class IamDouble(iam_pb2_grpc.IamServiceServicer):
    """GetJwks, GetCurrentPrincipal (echoes what the gateway forwarded) and Login (always
    UNIMPLEMENTED, saying whether a payload header arrived); everything else UNIMPLEMENTED."""

    def GetJwks(self, request: iam_pb2.GetJwksRequest, context: Any) -> httpbody_pb2.HttpBody:
        return httpbody_pb2.HttpBody(
            content_type="application/json", data=json.dumps(jwks()).encode()
        )

    def GetCurrentPrincipal(
        self, request: iam_pb2.GetCurrentPrincipalRequest, context: grpc.ServicerContext
    ) -> iam_pb2.Principal:
        metadata = dict(context.invocation_metadata())
        raw = metadata.get(PAYLOAD_HEADER)
        payload = decode_payload_header(str(raw)) if raw else {}
        echo = {
            "payload": payload,
            "authorization": "authorization" in metadata,
        }
        return iam_pb2.Principal(
            name=payload.get("sub", ""),
            tenant=payload.get("tenant", ""),
            display_name=json.dumps(echo),
        )

    def Login(self, request: iam_pb2.LoginRequest, context: grpc.ServicerContext) -> Any:
        seen = "present" if PAYLOAD_HEADER in dict(context.invocation_metadata()) else "absent"
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"login reached the double; payload {seen}")


@pytest.fixture(scope="module")
def iam_address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    iam_pb2_grpc.add_IamServiceServicer_to_server(IamDouble(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None).wait()


WEBHOOKS = "oih.webhooks.v1.WebhookService"


@pytest.fixture(scope="module")
def webhooks_address() -> Iterator[str | None]:
    """A WebhookService double that echoes what the transcoder made of the HTTP request (as
    JSON in an HttpBody), or None when the contract has no webhooks service."""
    try:
        from oih.webhooks.v1 import webhooks_pb2_grpc
    except ImportError:
        yield None
        return

    class WebhooksDouble(webhooks_pb2_grpc.WebhookServiceServicer):  # type: ignore[misc]
        def ReceiveWebhook(self, request: Any, context: Any) -> httpbody_pb2.HttpBody:
            echo = {
                "flow_id": request.flow_id,
                "content_type": request.body.content_type,
                "data": base64.b64encode(request.body.data).decode(),
                "extensions": [
                    {"type_url": e.type_url, "value": base64.b64encode(e.value).decode()}
                    for e in request.body.extensions
                ],
                "payload_header": PAYLOAD_HEADER in dict(context.invocation_metadata()),
            }
            return httpbody_pb2.HttpBody(
                content_type="application/json", data=json.dumps(echo).encode()
            )

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    webhooks_pb2_grpc.add_WebhookServiceServicer_to_server(WebhooksDouble(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None).wait()


@pytest.fixture(scope="module")
def gateway(
    iam_address: str, webhooks_address: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, EnvoyProcess]]:
    overrides = {IAM: iam_address}
    if webhooks_address:
        overrides[WEBHOOKS] = webhooks_address
    upstreams = all_upstreams(overrides)
    base_url, envoy = start_gateway(
        tmp_path_factory.mktemp("gateway"), upstreams, max_request_bytes=MAX_REQUEST_BYTES
    )
    yield base_url, envoy
    envoy.stop()


@pytest.fixture(scope="module")
def http(gateway: tuple[str, EnvoyProcess]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway[0], timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def iam_stub(gateway: tuple[str, EnvoyProcess]) -> Iterator[iam_pb2_grpc.IamServiceStub]:
    with grpc.insecure_channel(gateway[0].removeprefix("http://")) as channel:
        yield iam_pb2_grpc.IamServiceStub(channel)


def assert_json_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("message"), str), body
    assert "code" in body, body
    return body


def assert_local_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """An error Envoy made itself: `{"code": <http status>, "message": ...}`."""
    body = assert_json_error(response, status)
    assert body["code"] == status, body
    return body


def principal_echo(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    echo: dict[str, Any] = json.loads(response.json()["display_name"])
    return echo


# --------------------------------------------------------------------------------------------
# Rendering


def test_template_regexes() -> None:
    assert template_regex("/v1/{name=flows/*}:start") == "^/v1/flows/[^/]+:start$"
    assert template_regex("/v1/{x=**}") == "^/v1/.+$"
    assert template_regex("/v1/{name}") == "^/v1/[^/]+$"
    assert template_regex("/v1/{user.name=users/*}") == "^/v1/users/[^/]+$"
    assert template_regex("/.well-known/jwks.json") == "^/\\.well-known/jwks\\.json$"
    assert template_regex("/hooks/{flow_id}", strict=True) == "^/hooks/[^/:]+$"


def test_contract_is_read() -> None:
    rpcs = {r.grpc_path: r for r in read_rpcs(DESCRIPTOR_SET.read_bytes())}
    assert rpcs[f"/{IAM}/GetJwks"].public
    assert rpcs[f"/{IAM}/Login"].public
    assert not rpcs[f"/{IAM}/GetCurrentPrincipal"].public
    assert [(p.method, p.template) for p in rpcs[f"/{IAM}/GetJwks"].http] == [
        ("GET", "/.well-known/jwks.json")
    ]


def test_committed_config_is_fresh() -> None:
    fresh = dumps_envoy_config(render_default(DESCRIPTOR_SET.read_bytes()))
    committed = layout.ENVOY_CONFIG.read_text()
    assert committed == fresh, "gateway/envoy.yaml is stale: run `python -m oih_gateway render`"


def test_committed_config_validates(tmp_path: Path) -> None:
    # Run as from a checkout: the descriptor set and the docs folder (written by `render` or
    # `oih up`) at the relative paths the config names.
    (tmp_path / "generated").symlink_to(layout.DESCRIPTOR_SET.parent)
    write_docs(tmp_path / layout.DOCS_DIR_RELATIVE, layout.OPENAPI.read_text())
    validate(layout.ENVOY_CONFIG, cwd=tmp_path)


# --------------------------------------------------------------------------------------------
# Authentication at the edge


def test_jwks_is_public(http: httpx.Client) -> None:
    response = http.get("/.well-known/jwks.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["keys"][0]["kid"] == KID


def test_missing_token_is_401_json(http: httpx.Client) -> None:
    assert_local_error(http.get("/v1/users/me"), 401)


def test_valid_token_reaches_the_service_with_its_payload(http: httpx.Client) -> None:
    token = rs256()
    response = http.get("/v1/users/me", headers=bearer(token))
    echo = principal_echo(response)
    assert echo["payload"]["sub"] == "users/alice"
    assert echo["payload"]["tenant"] == "tenants/acme"
    assert echo["payload"]["iss"] == ISSUER
    assert echo["authorization"] is True  # forwarded: services verify it again
    body = response.json()
    assert body["name"] == "users/alice"
    assert body["permissions"] == []  # always_print_primitive_fields
    assert body["type"] == "PRINCIPAL_TYPE_UNSPECIFIED"


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda: rs256(exp=int(time.time()) - 60), id="expired"),
        pytest.param(lambda: rs256(key=OTHER_KEY), id="other-key"),
        pytest.param(lambda: rs256(key=OTHER_KEY, kid="unknown"), id="unknown-kid"),
        pytest.param(lambda: rs256(aud="someone-else"), id="wrong-audience"),
        pytest.param(lambda: rs256(iss="evil"), id="wrong-issuer"),
        pytest.param(
            lambda: jwt.encode(
                {k: v for k, v in claims().items() if k != "exp"},
                SIGNING_KEY,
                algorithm="RS256",
                headers={"kid": KID},
            ),
            id="no-exp",
        ),
        pytest.param(
            lambda: unsigned_token({"alg": "none", "typ": "JWT", "kid": KID}, claims()),
            id="alg-none",
        ),
        pytest.param(
            lambda: unsigned_token(
                {"alg": "HS256", "typ": "JWT", "kid": KID},
                claims(),
                lambda data: hmac.new(
                    SIGNING_KEY.public_key().public_bytes(
                        serialization.Encoding.PEM,
                        serialization.PublicFormat.SubjectPublicKeyInfo,
                    ),
                    data,
                    hashlib.sha256,
                ).digest(),
            ),
            id="hs256-with-public-key",
        ),
        pytest.param(lambda: "not.a.jwt", id="garbage"),
    ],
)
def test_bad_tokens_are_401_json(http: httpx.Client, make_token: Callable[[], str]) -> None:
    assert_local_error(http.get("/v1/users/me", headers=bearer(make_token())), 401)


def test_small_clock_skew_is_tolerated(http: httpx.Client) -> None:
    principal_echo(http.get("/v1/users/me", headers=bearer(rs256(exp=int(time.time()) - 2))))


def test_token_in_query_is_refused(http: httpx.Client) -> None:
    assert_local_error(http.get("/v1/users/me", params={"access_token": rs256()}), 401)


def test_forged_payload_header_without_token_is_401(http: httpx.Client) -> None:
    forged = _b64(json.dumps(claims(sub="users/root", permissions=["all"])).encode())
    assert_local_error(http.get("/v1/users/me", headers={PAYLOAD_HEADER: forged}), 401)


def test_forged_payload_header_is_replaced_by_the_verified_one(http: httpx.Client) -> None:
    forged = _b64(json.dumps(claims(sub="users/root", permissions=["all"])).encode())
    response = http.get("/v1/users/me", headers={**bearer(rs256()), PAYLOAD_HEADER: forged})
    echo = principal_echo(response)
    assert echo["payload"]["sub"] == "users/alice"
    assert echo["payload"]["permissions"] == ["flows.read"]


def test_forged_payload_header_is_stripped_on_public_routes(http: httpx.Client) -> None:
    forged = _b64(json.dumps(claims(sub="users/root")).encode())
    response = http.post(
        "/v1/login", json={"username": "a", "password": "b"}, headers={PAYLOAD_HEADER: forged}
    )
    body = assert_json_error(response, 501)  # the double's UNIMPLEMENTED, transcoded
    assert body["message"] == "login reached the double; payload absent"


def test_native_grpc_needs_a_token(iam_stub: iam_pb2_grpc.IamServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        iam_stub.GetCurrentPrincipal(iam_pb2.GetCurrentPrincipalRequest(), timeout=5)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_native_grpc_with_a_token(iam_stub: iam_pb2_grpc.IamServiceStub) -> None:
    principal = iam_stub.GetCurrentPrincipal(
        iam_pb2.GetCurrentPrincipalRequest(),
        metadata=[("authorization", f"Bearer {rs256()}"), (PAYLOAD_HEADER, "Zm9yZ2Vk")],
        timeout=5,
    )
    echo = json.loads(principal.display_name)
    assert principal.name == "users/alice"
    assert echo["payload"]["aud"] == AUDIENCE
    assert echo["authorization"] is True


def test_native_grpc_public_method_without_token(iam_stub: iam_pb2_grpc.IamServiceStub) -> None:
    body = iam_stub.GetJwks(iam_pb2.GetJwksRequest(), timeout=5)
    assert json.loads(body.data)["keys"][0]["kid"] == KID


def test_native_grpc_bad_token(iam_stub: iam_pb2_grpc.IamServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        iam_stub.GetCurrentPrincipal(
            iam_pb2.GetCurrentPrincipalRequest(),
            metadata=[("authorization", f"Bearer {rs256(key=OTHER_KEY)}")],
            timeout=5,
        )
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --------------------------------------------------------------------------------------------
# Errors Envoy makes itself are JSON


def test_unknown_path_without_token_is_401(http: httpx.Client) -> None:
    assert_local_error(http.get("/v1/nothing-here"), 401)


def test_unknown_path_is_404_json(http: httpx.Client) -> None:
    assert_local_error(http.get("/v1/nothing-here", headers=bearer(rs256())), 404)


def test_wrong_method_is_404_json(http: httpx.Client) -> None:
    assert_local_error(http.put("/v1/users/me", headers=bearer(rs256())), 404)


def test_malformed_json_is_400_json(http: httpx.Client) -> None:
    response = http.post(
        "/v1/login", content=b'{"username": "a", ', headers={"content-type": "application/json"}
    )
    assert_local_error(response, 400)


@pytest.mark.parametrize(("body", "field"), [
    ({"user": {"username": "a@b.c", "roles": "roles/tenant-admin"}}, "user.roles"),
    ({"user": {"username": "a@b.c", "permissions": {"all": True}}}, "user.permissions"),
    ({"user": {"username": "a@b.c", "roles": 5}}, "user.roles"),
    ('{"user": {"rol\\u0065s": "roles/x", "\\u0070ermissions": "all"}}',
     "user.permissions"),
])
def test_a_single_value_where_a_list_belongs_is_400_naming_the_field(
        http: httpx.Client, body: dict[str, Any] | str, field: str) -> None:
    """protobuf's JSON converter would take it as a one-element list (escaped keys too)."""
    content = body if isinstance(body, str) else json.dumps(body)
    reply = http.post("/v1/users", content=content,
                      headers={**bearer(rs256()), "content-type": "application/json"})
    assert field in assert_local_error(reply, 400)["message"]


def test_lists_and_null_where_lists_belong_reach_the_service(http: httpx.Client) -> None:
    for roles in (["roles/a", "roles/b"], [], None):
        body = {"user": {"username": 'tricky " {[ "roles": "x"', "roles": roles,
                         "displayName": "roles"}, "password": "roles"}
        reply = http.post("/v1/users", json=body, headers=bearer(rs256()))
        assert reply.status_code == 501, reply.text  # the IAM double answers UNIMPLEMENTED


def test_the_body_fields_that_must_be_arrays_come_from_the_contract() -> None:
    arrays = body_array_fields(DESCRIPTOR_SET.read_bytes())
    assert {"user.roles", "user.permissions"} <= set(arrays[("POST", "/v1/users")])
    flow = set(arrays[("PATCH", "/v1/{flow.name=flows/*}")])  # body: the flow itself
    assert {"owners", "graph.nodes", "graph.edges"} <= flow
    assert not any(path.startswith("graph.nodes.") for path in flow)  # never inside an array
    assert ("GET", "/v1/flows") not in arrays


def test_well_formed_login_reaches_the_service(http: httpx.Client) -> None:
    response = http.post("/v1/login", json={"username": "a", "password": "b"})
    body = assert_json_error(response, 501)
    assert body["code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]


def test_body_over_the_limit_is_413_json(http: httpx.Client) -> None:
    big = json.dumps({"username": "a" * (MAX_REQUEST_BYTES + 1), "password": "b"})
    response = http.post("/v1/login", content=big, headers={"content-type": "application/json"})
    assert_local_error(response, 413)


def test_unknown_query_parameter_is_400_json(http: httpx.Client) -> None:
    response = http.get("/v1/users/me", params={"bogus": "1"}, headers=bearer(rs256()))
    assert_local_error(response, 400)


def _route_of_another_service() -> str | None:
    """A GET path of a non-IAM service (variables filled in), if the contract has one."""
    for rpc in read_rpcs(DESCRIPTOR_SET.read_bytes()):
        if rpc.service == IAM or rpc.public:
            continue
        for pattern in rpc.http:
            if pattern.method == "GET" and "**" not in pattern.template:
                path = pattern.template
                while "{" in path:
                    start, end = path.index("{"), path.index("}")
                    _field, _eq, sub = path[start + 1 : end].partition("=")
                    path = path[:start] + (sub or "*").replace("*", "x1") + path[end + 1 :]
                return path
    return None


def test_service_down_is_503_json(http: httpx.Client) -> None:
    path = _route_of_another_service()
    if path is None:
        pytest.skip("the contract has no service besides IAM yet")
    assert_json_error(http.get(path, headers=bearer(rs256())), 503)


def test_iam_down_is_503_json(
    gateway_factory: Callable[..., tuple[str, EnvoyProcess]],
) -> None:
    base_url, _envoy = gateway_factory(all_upstreams({}), wait_for_jwks=False)
    response = httpx.post(f"{base_url}/v1/login", json={"username": "a", "password": "b"})
    assert_json_error(response, 503)
    # Without IAM there is no JWKS: every token is refused, as JSON.
    assert_local_error(httpx.get(f"{base_url}/v1/users/me", headers=bearer(rs256())), 401)


def test_rendered_config_validates(tmp_path: Path, iam_address: str) -> None:
    from oih_gateway.render import write_envoy_config

    path = tmp_path / "envoy.yaml"
    write_envoy_config(
        path,
        DESCRIPTOR_SET.read_bytes(),
        all_upstreams({IAM: iam_address}),
        listen_port=18080,
        admin_port=19901,
        descriptor_path=str(DESCRIPTOR_SET),
        issuer=ISSUER,
        audience=AUDIENCE,
    )
    validate(path)


def test_native_grpc_wrong_audience(iam_stub: iam_pb2_grpc.IamServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        iam_stub.GetCurrentPrincipal(
            iam_pb2.GetCurrentPrincipalRequest(),
            metadata=[("authorization", f"Bearer {rs256(aud='someone-else')}")],
            timeout=5,
        )
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_escaped_slash_is_400_json(http: httpx.Client) -> None:
    body = assert_local_error(http.get("/v1/users%2Fme", headers=bearer(rs256())), 400)
    assert body["message"]


def test_grpc_path_over_plain_http_is_refused(http: httpx.Client) -> None:
    assert_local_error(http.get(f"/{IAM}/GetJwks"), 404)


@pytest.mark.parametrize("content_type", ["application/grpc", "application/grpc+proto"])
@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/flows"), ("POST", "/v1/login"),
                                              ("GET", "/v1/users/me")])
def test_grpc_framed_request_to_a_rest_path_is_a_json_415(
        http: httpx.Client, content_type: str, method: str, path: str) -> None:
    """Not HTTP 200 with a grpc-status and an empty body (Envoy answers gRPC requests in gRPC),
    with a token or without."""
    for headers in ({}, bearer(rs256())):
        reply = http.request(method, path, headers={**headers, "content-type": content_type},
                             content=b"{}")
        body = assert_local_error(reply, 415)
        assert "grpc-status" not in reply.headers
        assert "application/json" in body["message"]


# --------------------------------------------------------------------------------------------
# Raw-body RPCs (google.api.HttpBody body): webhooks


@pytest.fixture
def hooks(webhooks_address: str | None, http: httpx.Client) -> httpx.Client:
    if webhooks_address is None:
        pytest.skip("the contract has no webhooks service")
    return http


def test_webhook_raw_body_and_query_reach_the_service(hooks: httpx.Client) -> None:
    raw = b"<xml>not json</xml>"
    forged = _b64(json.dumps(claims(sub="users/root")).encode())
    response = hooks.post(
        "/hooks/f1",
        params={"source": "crm", "attempt": "2"},
        content=raw,
        headers={"content-type": "application/xml", PAYLOAD_HEADER: forged},
    )
    assert response.status_code == 200, response.text
    echo = response.json()
    assert echo["flow_id"] == "f1"
    assert echo["content_type"] == "application/xml"
    assert base64.b64decode(echo["data"]) == raw
    assert echo["payload_header"] is False  # stripped, the route is public
    captured = b"".join(base64.b64decode(e["value"]) for e in echo["extensions"])
    assert b"source" in captured and b"crm" in captured and b"attempt" in captured


def test_webhook_get_with_query(hooks: httpx.Client) -> None:
    response = hooks.get("/hooks/f2", params={"q": "1"})
    assert response.status_code == 200, response.text
    echo = response.json()
    assert echo["flow_id"] == "f2"
    captured = b"".join(base64.b64decode(e["value"]) for e in echo["extensions"])
    assert b"q" in captured


def test_webhook_body_limit_is_the_raw_body_limit(hooks: httpx.Client) -> None:
    # Over the JSON limit but under the raw-body limit (10 MiB): accepted.
    response = hooks.post("/hooks/f3", content=b"x" * (MAX_REQUEST_BYTES * 2))
    assert response.status_code == 200, response.text


def test_webhook_custom_verb_path_is_not_public(hooks: httpx.Client) -> None:
    # The public rule for /hooks/{flow_id} must not cover other verbs' paths.
    assert_local_error(hooks.post("/hooks/f1:admin", content=b"{}"), 401)
