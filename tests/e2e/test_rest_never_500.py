"""Bad input never gets a 500: every REST route of every running service, called with odd path
values, wrong-typed and malformed bodies and nonsense query parameters, answers with a 4xx JSON
body (or 200 where the input happens to be acceptable)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from oih_gateway import layout
from oih_gateway.render import Rpc, read_rpcs
from tests.e2e.conftest import ADMIN, ADMIN_PASSWORD, E2E_SERVICES, auth, login

#: Calls that would disturb the rest of the session even with bad input: rotating the signing
#: key (Envoy learns the new key only at its next JWKS fetch) and revoking the caller's token.
SKIP = {"RotateSigningKey", "RevokeToken"}

ODD_SEGMENTS = ["no-such-id", "x" * 300, "%E2%98%83", "'%20OR%201=1--", "-"]
BODIES: list[Any] = [
    {},
    {"display_name": 5, "graph": "not a graph", "user": [], "flow": {"graph": {"nodes": 3}}},
    {"name": {"nested": True}, "page_size": "many", "data": "not an object"},
    [1, 2, 3],
    "just a string",
]
QUERIES = [
    {"page_size": "-1"},
    {"page_token": "not-a-token"},
    {"filter": "(((", "order_by": "drop table"},
    {"page_size": "99999999999999999999"},
]


def running_rpcs() -> list[Rpc]:
    rpcs = read_rpcs(layout.DESCRIPTOR_SET.read_bytes())
    return [rpc for rpc in rpcs
            if layout.package_of(rpc.service).removeprefix("oih.") in E2E_SERVICES
            and rpc.name not in SKIP]


def fill(template: str, segment: str) -> str:
    """`/v1/{name=flows/*}:start` → `/v1/flows/<segment>:start`."""
    def variable(match: re.Match[str]) -> str:
        pattern = match.group(2) or "*"
        return pattern.replace("**", segment).replace("*", segment)

    return re.sub(r"\{([a-z_.]+)(?:=([^}]+))?\}", variable, template)


def calls(rpc: Rpc) -> list[tuple[str, str, Any, dict[str, str]]]:
    found = []
    for binding in rpc.http:
        for segment in ODD_SEGMENTS:
            path = fill(binding.template, segment)
            if binding.method in ("GET", "DELETE"):
                found += [(binding.method, path, None, query) for query in QUERIES]
            else:
                found += [(binding.method, path, body, {}) for body in BODIES]
    return found


@pytest.mark.parametrize("rpc", running_rpcs(), ids=lambda rpc: rpc.name)
def test_bad_input_never_answers_5xx(rest: httpx.Client, rpc: Rpc) -> None:
    # A fresh platform-admin token: permissions pass, so the bad input reaches the service.
    token = login(rest, ADMIN, ADMIN_PASSWORD)
    for method, path, body, query in calls(rpc):
        reply = rest.request(method, path, params=query, headers=auth(token),
                             json=body if body is not None else None)
        assert reply.status_code < 500, (method, path, body, query, reply.text)
        if reply.status_code >= 400:
            assert reply.headers["content-type"].startswith("application/json"), reply.text
            assert reply.json()["message"], reply.text
