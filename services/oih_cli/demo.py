"""The seed scenarios, run through REST via Envoy against a running platform.

(b) a platform admin creates a tenant and its admin; the tenant admin creates a service account;
    the service account exchanges its credentials for a token and calls GET /v1/users/me.
Further scenarios join as their services land (see the README).
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Sequence
from typing import Any

from oih_cli.rest import Rest


def step(text: str) -> None:
    print(f"  -> {text}", flush=True)


def scenario_b(gateway: Rest, admin_username: str, admin_password: str) -> dict[str, Any]:
    """A user creates a service account (example b); returns what it made."""
    print("(b) a user creates a service account", flush=True)
    admin = gateway.with_token(gateway.post(
        "/v1/login", {"username": admin_username, "password": admin_password})["access_token"])
    step(f"admin {admin_username} logged in")
    tenant = admin.post("/v1/tenants", {"display_name": f"acme-{uuid.uuid4().hex[:6]}"})
    step(f"created tenant {tenant['name']} ({tenant['display_name']})")
    username = f"owner-{uuid.uuid4().hex[:6]}@acme.example"
    password = uuid.uuid4().hex
    user = admin.post("/v1/users", {
        "user": {"username": username, "tenant": tenant["name"], "roles": ["roles/tenant-admin"]},
        "password": password,
    })
    step(f"created tenant admin {user['name']} ({username})")
    tenant_admin = gateway.with_token(gateway.post(
        "/v1/login", {"username": username, "password": password})["access_token"])
    account = tenant_admin.post("/v1/service-accounts", {
        "display_name": "crm sync", "roles": ["roles/service-account"]})
    step(f"tenant admin created {account['name']} (secret shown once)")
    exchanged = gateway.post("/v1/tokens:exchange", {
        "client_id": account["client_id"], "client_secret": account["client_secret"]})
    me = gateway.with_token(exchanged["access_token"]).get("/v1/users/me")
    step(f"service account called /v1/users/me: {me['name']} in {me['tenant']}")
    if me["name"] != account["name"]:
        raise RuntimeError(f"/v1/users/me answered {me['name']}, expected {account['name']}")
    return {"tenant": tenant, "tenant_admin": tenant_admin, "service_account": account}


def run(gateway_url: str, admin_username: str, admin_password: str) -> None:
    gateway = Rest(gateway_url)
    scenario_b(gateway, admin_username, admin_password)
    print("all scenarios passed", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oih demo", description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--admin", default=os.environ.get("OIH_IAM_ADMIN_USERNAME",
                                                          "admin@oih.local"))
    parser.add_argument("--password", default=os.environ.get("OIH_IAM_ADMIN_PASSWORD", ""),
                        help="the admin password (default: $OIH_IAM_ADMIN_PASSWORD)")
    args = parser.parse_args(argv)
    if not args.password:
        parser.error("give the admin password (--password or OIH_IAM_ADMIN_PASSWORD)")
    run(args.gateway, args.admin, args.password)
    return 0
