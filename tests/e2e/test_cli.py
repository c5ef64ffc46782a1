"""The operator CLI against a real platform: `oih` as a separate process, over REST through
Envoy, with its config file, its output formats and its exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from oih_cli.platform import Platform
from tests.e2e.conftest import ADMIN, ADMIN_PASSWORD, PASSWORD, auth, login, unique

FLOW_FILE = """\
display_name: {name}
description: doubles n
graph:
  nodes:
  - id: start
    component: trigger
    function: manual
  - id: double
    component: transform
    function: transform
    fields:
      expression: "n >= 0 ? {{'n': n, 'doubled': n * 2}} : $error('negative n')"
    settings:
      retry_policy:
        max_attempts: 1
  - id: sink
    component: sink
    function: sink
  edges:
  - source: start
    target: double
  - source: double
    target: sink
"""


class Oih:
    """Runs `oih` as a user would, with its own config file."""

    def __init__(self, config: Path, gateway: str) -> None:
        self.config = config
        self.gateway = gateway

    def __call__(self, *args: str, stdin: str = "", expect: int | None = 0,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("OIH_GATEWAY", "OIH_TOKEN", "OIH_PASSWORD", "OIH_CLIENT_SECRET")}
        env["OIH_CONFIG"] = str(self.config)
        done = subprocess.run([sys.executable, "-m", "oih_cli.main", *args], input=stdin,
                              capture_output=True, text=True, env=env, timeout=timeout,
                              check=False)
        if expect is not None:
            assert done.returncode == expect, (args, done.returncode, done.stdout, done.stderr)
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def login(self, username: str, password: str) -> None:
        self("login", "--gateway", self.gateway, "--username", username, "--password-stdin",
             stdin=password + "\n")


@pytest.fixture(scope="module")
def tenant(rest: httpx.Client, admin_token: str) -> dict[str, str]:
    """A fresh tenant with an admin who logs in with the CLI."""
    tenant = rest.post("/v1/tenants", json={"display_name": unique("cli")},
                       headers=auth(admin_token)).json()
    username = f"{unique('ops')}@cli.example"
    user = rest.post("/v1/users", headers=auth(admin_token), json={
        "user": {"username": username, "tenant": tenant["name"],
                 "roles": ["roles/tenant-admin"]}, "password": PASSWORD})
    assert user.status_code == 200, user.text
    return {"tenant": tenant["name"], "username": username, "user": user.json()["name"],
            "token": login(rest, username, PASSWORD)}


@pytest.fixture
def oih(tmp_path: Path, platform: Platform) -> Oih:
    return Oih(tmp_path / "oih" / "config.yaml", platform.gateway_url)


@pytest.fixture
def ops(oih: Oih, tenant: dict[str, str]) -> Oih:
    oih.login(tenant["username"], PASSWORD)
    return oih


def test_login_keeps_gateway_and_token_in_a_private_file(oih: Oih, platform: Platform) -> None:
    oih.login(ADMIN, ADMIN_PASSWORD)
    assert stat.S_IMODE(oih.config.stat().st_mode) == 0o600
    saved = yaml.safe_load(oih.config.read_text())
    assert saved["gateway"] == platform.gateway_url
    assert saved["token"].count(".") == 2  # a JWT
    assert ADMIN_PASSWORD not in oih.config.read_text()  # never the password
    assert oih.json("whoami")["name"].startswith("users/")


def test_errors_are_one_line_with_reliable_exit_codes(oih: Oih, ops: Oih) -> None:
    missing = ops("get", "flow", "flows/does-not-exist", expect=3)
    assert missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1
    assert "404" in missing.stderr
    assert ops("get", "nonsense", expect=2).stderr.startswith("error: unknown resource")
    assert ops("get", "flow", "users/x", expect=2).stderr.startswith("error: ")
    bad_login = oih("login", "--gateway", oih.gateway, "--username", ADMIN, "--password-stdin",
                    stdin="wrong\n", expect=4)
    assert bad_login.stderr.startswith("error: log in: ")
    Oih(oih.config.parent / "none.yaml", oih.gateway)("get", "flows", expect=4)


def test_get_list_describe_delete_resources(ops: Oih, oih: Oih, tenant: dict[str, str],
                                            rest: httpx.Client) -> None:
    account = rest.post("/v1/service-accounts", headers=auth(tenant["token"]),
                        json={"display_name": "cli robot", "roles": ["roles/service-account"]})
    assert account.status_code == 200, account.text
    name = account.json()["name"]
    table = ops("get", "service-accounts").stdout
    assert "DISPLAY NAME" in table and name in table and "cli robot" in table
    assert [a["name"] for a in ops.json("list", "sa")] == [name]
    assert yaml.safe_load(ops("describe", "service-account", name).stdout)["name"] == name
    assert ops("get", "sa", name, "-o", "name").stdout.strip() == name
    users = ops.json("get", "users")
    assert tenant["user"] in [u["name"] for u in users]
    components = ops.json("get", "components", "--filter", "access=PUBLIC")
    assert {"trigger", "transform", "sink"} <= {c["display_name"] for c in components}
    assert ops("delete", "service-account", name).stdout.strip() == f"deleted {name}"
    ops("get", "sa", name, expect=3)
    # The platform admin sees tenants; yaml output parses.
    oih.login(ADMIN, ADMIN_PASSWORD)
    tenants = yaml.safe_load(oih("get", "tenants", "-o", "yaml").stdout)
    assert tenant["tenant"] in [t["name"] for t in tenants]


def test_a_service_account_login_renews_its_token(oih: Oih, tenant: dict[str, str],
                                                  rest: httpx.Client) -> None:
    account = rest.post("/v1/service-accounts", headers=auth(tenant["token"]),
                        json={"display_name": "renewing robot",
                              "roles": ["roles/service-account"]}).json()
    oih("login", "--gateway", oih.gateway, "--client-id", account["client_id"],
        "--password-stdin", stdin=account["client_secret"] + "\n")
    saved = yaml.safe_load(oih.config.read_text())
    saved["expires_at"] = time.time() - 1  # as if it had expired
    oih.config.write_text(yaml.safe_dump(saved))
    assert oih.json("whoami")["name"] == account["name"]
    denied = oih("get", "users", expect=4)  # a service account may not read users
    assert "403" in denied.stderr and denied.stderr.count("\n") == 1
    renewed = yaml.safe_load(oih.config.read_text())
    assert renewed["token"] != saved["token"]
    assert renewed["expires_at"] > time.time() + 60
    assert stat.S_IMODE(oih.config.stat().st_mode) == 0o600


def test_an_expired_user_login_asks_to_log_in_again(ops: Oih) -> None:
    saved = yaml.safe_load(ops.config.read_text())
    saved["expires_at"] = time.time() - 1
    ops.config.write_text(yaml.safe_dump(saved))
    expired = ops("get", "flows", expect=4)
    assert "expired" in expired.stderr and "oih login" in expired.stderr


def flow_by_display_name(rest: httpx.Client, token: str, display_name: str) -> list[Any]:
    flows = rest.get("/v1/flows", headers=auth(token), params={"page_size": 100}).json()
    return [f for f in flows.get("flows", []) if f["display_name"] == display_name]


def test_apply_creates_then_changes_nothing_then_updates(
        ops: Oih, tmp_path: Path, tenant: dict[str, str], rest: httpx.Client) -> None:
    display_name = unique("cli-doubler")
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "doubler.yaml").write_text(FLOW_FILE.format(name=display_name))

    dry = ops("apply", "-f", str(folder), "--dry-run").stdout
    assert f"would create {display_name}" in dry and "+  - id: double" in dry
    assert flow_by_display_name(rest, tenant["token"], display_name) == []  # nothing sent

    created = ops("apply", "-f", str(folder)).stdout
    assert "created" in created
    [flow] = flow_by_display_name(rest, tenant["token"], display_name)
    assert flow["graph"]["nodes"][1]["component"].startswith("components/")

    # Applying twice changes nothing: no new revision, same etag.
    again = ops("apply", "-f", str(folder)).stdout
    assert again.strip() == f"{flow['name']} unchanged ({display_name})"
    [same] = flow_by_display_name(rest, tenant["token"], display_name)
    assert (same["version"], same["etag"]) == (flow["version"], flow["etag"])
    assert "unchanged" in ops("apply", "-f", str(folder), "--dry-run").stdout

    (folder / "doubler.yaml").write_text(
        FLOW_FILE.format(name=display_name).replace("doubles n", "doubles every n"))
    dry = ops("apply", "-f", str(folder), "--dry-run").stdout
    assert "-description: doubles n" in dry and "+description: doubles every n" in dry
    assert ops("apply", "-f", str(folder)).stdout.strip() == \
        f"{flow['name']} configured (description)"
    [updated] = flow_by_display_name(rest, tenant["token"], display_name)
    assert updated["description"] == "doubles every n"
    assert int(updated["version"]) == int(flow["version"]) + 1

    # export writes it back; applying the export changes nothing.
    exported = tmp_path / "exported"
    ops("export", "-d", str(exported), flow["name"])
    [written] = list(exported.glob("*.yaml"))
    document = yaml.safe_load(written.read_text())
    assert document["graph"]["nodes"][0]["component"] == "trigger"  # by name again
    assert "state" not in document and "etag" not in document
    assert "unchanged" in ops("apply", "-f", str(exported)).stdout


def test_invalid_flow_files_are_refused_before_anything_is_sent(
        ops: Oih, tmp_path: Path, tenant: dict[str, str], rest: httpx.Client) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    good = unique("good")
    (folder / "a-good.yaml").write_text(FLOW_FILE.format(name=good))
    (folder / "b-typo.yaml").write_text(
        FLOW_FILE.format(name=unique("typo")).replace("graph:", "grpah:"))
    (folder / "c-state.yaml").write_text(
        FLOW_FILE.format(name=unique("state")) + "state: STATE_ACTIVE\n")
    (folder / "d-component.yaml").write_text(
        FLOW_FILE.format(name=unique("nocomp")).replace("component: sink",
                                                        "component: no such component"))
    refused = ops("apply", "-f", str(folder), expect=2)
    assert "nothing was sent" in refused.stderr
    assert "grpah" in refused.stderr and "state" in refused.stderr
    assert flow_by_display_name(rest, tenant["token"], good) == []
    (folder / "b-typo.yaml").unlink()
    (folder / "c-state.yaml").unlink()
    unresolved = ops("apply", "-f", str(folder), expect=2)
    assert "graph.nodes[2].component" in unresolved.stderr
    assert flow_by_display_name(rest, tenant["token"], good) == []


def test_run_a_flow_watch_it_and_replay_a_dead_letter(
        ops: Oih, tmp_path: Path, tenant: dict[str, str], rest: httpx.Client) -> None:
    display_name = unique("cli-run")
    (tmp_path / "run.yaml").write_text(FLOW_FILE.format(name=display_name))
    ops("apply", "-f", str(tmp_path / "run.yaml"))
    [flow] = flow_by_display_name(rest, tenant["token"], display_name)
    name = flow["name"]
    assert ops("flows", "start", name).stdout.strip() == f"{name} STARTING"
    deadline = time.monotonic() + 60
    while ops.json("get", "flow", name)["state"] != "STATE_ACTIVE":
        assert time.monotonic() < deadline, "the flow did not become ACTIVE"
        time.sleep(0.5)

    # A change to a running flow is refused with a clear line, not half-applied.
    (tmp_path / "run.yaml").write_text(
        FLOW_FILE.format(name=display_name).replace("doubles n", "changed"))
    running = ops("apply", "-f", str(tmp_path / "run.yaml"), expect=5)
    assert "stop it" in running.stderr

    execution = ops("flows", "execute", name, "--data", '{"n": 21}').stdout.strip()
    assert execution.startswith(f"{name}/executions/")
    watched = ops("executions", "watch", execution, "--timeout", "60")
    assert "SUCCEEDED" in watched.stdout
    shown = ops("executions", "show", execution).stdout
    assert "SUCCEEDED" in shown and "double" in shown and "sink" in shown
    assert '"doubled": 42' in shown  # the samples
    steps = {s["step_id"]: s for s in ops.json("executions", "show", execution)["steps"]}
    assert steps["double"]["messages_in"] == "1" and steps["double"]["messages_out"] == "1"
    assert execution in ops("executions", "list", name).stdout

    # A message the transform refuses is dead-lettered at once (max_attempts 1) …
    failing = ops("flows", "execute", name, "--data", '{"n": -1}').stdout.strip()
    ops("executions", "watch", failing, "--timeout", "60", expect=1)
    deadline = time.monotonic() + 30
    while not (letters := ops.json("dead-letters", "list", name)):
        assert time.monotonic() < deadline, "no dead letter"
        time.sleep(0.5)
    [letter] = letters
    assert letter["step_id"] == "double"
    assert "negative n" in ops("dead-letters", "list", name).stdout
    # … and can be replayed from the failed step.
    replayed = ops("dead-letters", "replay", letter["name"]).stdout
    assert replayed.startswith(f"replayed {letter['name']} in {name}/executions/")

    assert "STOPPING" in ops("flows", "stop", name).stdout or \
        "INACTIVE" in ops.json("get", "flow", name)["state"]
    deadline = time.monotonic() + 60
    while ops.json("get", "flow", name)["state"] != "STATE_INACTIVE":
        assert time.monotonic() < deadline, "the flow did not stop"
        time.sleep(0.5)
    ops("delete", "flow", name)
    ops("get", "flow", name, expect=3)
