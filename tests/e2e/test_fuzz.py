"""A fuzz run of the REST surface through Envoy: schemathesis generates requests from the
OpenAPI document the gateway publishes (gateway/openapi.json) for every operation of every
running service — valid ones and ones that break the schema — and sends them with a tenant
administrator's token. No answer may be a 5xx, and every error must be JSON with a message.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from oih_cli.platform import Platform
from oih_gateway import layout
from oih_gateway.render import read_rpcs
from tests.e2e.conftest import E2E_SERVICES, PASSWORD, auth, login, unique

pytestmark = pytest.mark.attacks

OPENAPI = Path(__file__).resolve().parents[2] / "gateway" / "openapi.json"
#: Examples per operation; about 50 operations run, so well over 1,000 requests in all.
EXAMPLES = 40
MINIMUM_REQUESTS = 1000

#: Status codes seen, over the whole run (the last test checks the total).
SEEN: Counter[int] = Counter()
UNAUTHENTICATED: list[str] = []
#: Where a 401 is the expected answer to made-up credentials.
CREDENTIAL_PATHS = {"/v1/login", "/v1/tokens:exchange"}


def running_services() -> list[str]:
    """Short names of the gRPC services that run in the e2e platform (the document's tags)."""
    return sorted({rpc.service.rsplit(".", 1)[-1]
                   for rpc in read_rpcs(layout.DESCRIPTOR_SET.read_bytes())
                   if layout.package_of(rpc.service).removeprefix("oih.") in E2E_SERVICES})


class Session:
    """A tenant administrator of its own tenant (everything a tenant may do, nothing more),
    logged in again whenever a fuzzed `tokens:revoke` revoked its token (that is a logout)."""

    def __init__(self, rest: Any, admin_token: str) -> None:
        self.rest = rest
        tenant = rest.post("/v1/tenants", headers=auth(admin_token),
                           json={"display_name": unique("fuzz")}).json()["name"]
        self.username = f"{unique('fuzzer')}@fuzz.example"
        created = rest.post("/v1/users", headers=auth(admin_token), json={
            "user": {"username": self.username, "tenant": tenant,
                     "roles": ["roles/tenant-admin"]}, "password": PASSWORD})
        assert created.status_code == 200, created.text
        self.token = login(rest, self.username, PASSWORD)

    def renew(self) -> None:
        self.token = login(self.rest, self.username, PASSWORD)


@pytest.fixture(scope="session")
def fuzzer(rest: Any, admin_token: str) -> Session:
    return Session(rest, admin_token)


schema = schemathesis.openapi.from_path(OPENAPI).include(
    tag_regex="^(" + "|".join(running_services()) + ")$")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_5xx_or_a_non_json_error(case: Any, platform: Platform,
                                                   fuzzer: Session) -> None:
    # The document declares bearer auth, so the generator makes up Authorization values: the
    # token replaces them (the header itself is still fuzzed by the requests without it).
    case.headers = {**(case.headers or {}), "Authorization": auth(fuzzer.token)["authorization"]}
    response = case.call(base_url=platform.gateway_url, timeout=30)
    if case.path == "/v1/tokens:revoke" and response.status_code == 200:
        fuzzer.renew()
    SEEN[response.status_code] += 1
    if response.status_code == 401 and case.path not in CREDENTIAL_PATHS:
        SEEN[-401] += 1  # refused a token that is valid: counted against the run
        UNAUTHENTICATED.append(f"{case.method} {case.formatted_path}: {response.text}")
    described = f"{case.method} {case.formatted_path} → {response.status_code}: {response.text[:300]}"
    assert response.status_code < 500, described
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]  # header → its values
        assert content_type.startswith("application/json"), described
        body = response.json()
        assert isinstance(body, dict) and body.get("message"), described


def test_the_run_was_big_enough_and_authenticated() -> None:
    """Runs after the fuzz tests (file order): at least 1,000 requests, and the token held."""
    total = sum(n for status, n in SEEN.items() if status > 0)
    assert total >= MINIMUM_REQUESTS, SEEN
    assert SEEN[-401] == 0, (SEEN, UNAUTHENTICATED[:5])  # every request was authenticated: it reached the services
