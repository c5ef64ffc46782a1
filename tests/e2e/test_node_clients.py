"""The contract serves a language other than Python: Node.js clients against the real platform
through Envoy, one over native gRPC (@grpc/grpc-js loading our .proto files) and one over REST
(fetch, typed from gateway/openapi.json). Needs Node.js 20+ and npm; `npm ci` installs the
locked packages from clients/node/package-lock.json."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from oih_cli.platform import Platform
from oih_gateway import layout
from tests.e2e.conftest import PASSWORD, auth, login, unique

CLIENTS = layout.ROOT / "clients" / "node"
NODE_MISSING = ("Node.js is missing: the Node client tests need `node` (20 or newer) and `npm` "
                "on PATH (Debian: apt-get install nodejs npm)")


def run(argv: list[str], *, stdin: str = "", timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=CLIENTS, input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def node_project() -> Path:
    """clients/node with its locked packages installed and the OpenAPI types generated."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(NODE_MISSING)
    version = run([node, "--version"]).stdout.strip()
    assert int(version.lstrip("v").split(".")[0]) >= 20, f"Node.js {version} is too old (20+)"
    for argv in ([npm, "ci", "--no-audit", "--no-fund"], [npm, "run", "types"]):
        done = run(argv)
        assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}{done.stderr}"
    return CLIENTS


@pytest.fixture(scope="module")
def user(rest: httpx.Client, admin_token: str) -> dict[str, Any]:
    """A tenant admin with one flow of its own."""
    tenant = rest.post("/v1/tenants", json={"display_name": unique("node")},
                       headers=auth(admin_token)).json()
    username = f"{unique('node')}@node.example"
    created = rest.post("/v1/users", headers=auth(admin_token), json={
        "user": {"username": username, "tenant": tenant["name"],
                 "roles": ["roles/tenant-admin"]}, "password": PASSWORD})
    assert created.status_code == 200, created.text
    token = login(rest, username, PASSWORD)
    components = rest.get("/v1/components", headers=auth(token),
                          params={"filter": "access=PUBLIC", "page_size": 100}).json()
    trigger = next(c["name"] for c in components["components"] if c["display_name"] == "trigger")
    flow = rest.post("/v1/flows", headers=auth(token), json={
        "display_name": unique("node-flow"),
        "graph": {"nodes": [{"id": "start", "component": trigger, "function": "manual"}]}})
    assert flow.status_code == 200, flow.text
    return {"username": username, "principal": created.json()["name"], "flow": flow.json()}


def expect_listing(done: subprocess.CompletedProcess[str], user: dict[str, Any]) -> None:
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["principal"] == user["principal"]
    assert result["flows"] == [{"name": user["flow"]["name"],
                                "display_name": user["flow"]["display_name"],
                                "state": "STATE_INACTIVE"}]


def test_node_grpc_client_logs_in_and_lists_flows_through_envoy(
        node_project: Path, platform: Platform, user: dict[str, Any]) -> None:
    address = platform.gateway_url.removeprefix("http://")
    done = run(["node", "grpc-client.mjs", address, user["username"]], stdin=PASSWORD)
    expect_listing(done, user)
    refused = run(["node", "grpc-client.mjs", address, user["username"]], stdin="wrong")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: 16 ")  # UNAUTHENTICATED


def test_node_rest_client_typed_from_openapi_logs_in_and_lists_flows(
        node_project: Path, platform: Platform, user: dict[str, Any]) -> None:
    typecheck = run(["npx", "tsc", "--noEmit", "-p", "."])
    assert typecheck.returncode == 0, typecheck.stdout
    done = run(["npx", "tsx", "rest-client.ts", platform.gateway_url, user["username"]],
               stdin=PASSWORD)
    expect_listing(done, user)
    refused = run(["npx", "tsx", "rest-client.ts", platform.gateway_url, user["username"]],
                  stdin="wrong")
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr


def test_the_openapi_types_catch_a_wrong_field(node_project: Path) -> None:
    source = (node_project / "rest-client.ts").read_text()
    broken = node_project / "generated" / "broken-client.ts"
    broken.write_text(source.replace("./generated/openapi.js", "./openapi.js")
                      .replace("principal: me.name", "principal: me.nmae"))
    try:
        checked = run(["npx", "tsc", "--noEmit", "--strict", "--skipLibCheck", "--target",
                       "ES2022", "--module", "NodeNext", "--moduleResolution", "NodeNext",
                       "--types", "node", str(broken)])
    finally:
        broken.unlink()
    assert checked.returncode != 0
    assert "nmae" in checked.stdout
