"""The real platform for end-to-end tests: service processes, Envoy and RabbitMQ, started the
same way `oih up` starts them (oih_cli.platform), on free ports in a temporary directory.

The services keep their data in SQLite files, or with `OIH_E2E_DATABASE=postgresql` each in a
fresh PostgreSQL database given as a plain `postgresql://` URL, as the deploy README writes them
(`scripts/test` runs the suite both ways)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from oih_cli.platform import Platform
from oih_dataplane import topology
from oih_runtime.bus import RetryPolicy, ServiceQueues
from oih_runtime.db import normalise_url
from oih_runtime.settings import DEFAULT_PORTS
from tests.gateway.conftest import free_port
from tests.support import postgres

#: A loopback address flows of the e2e platform may call (and only this one: the rest of
#: loopback stays refused by the egress guard), for test servers that a flow step calls.
RECEIVER_HOST = "127.0.0.2"
ADMIN = "admin@e2e.test"
ADMIN_PASSWORD = "e2e-admin-password"
PASSWORD = "correct horse battery staple"

#: The services the end-to-end suite runs (all implemented ones as they land).
E2E_SERVICES = ["iam", "components", "secrets", "flows", "orchestrator", "scheduler",
                "snapshots", "webhooks"]


NAMESPACE = f"e2e{uuid.uuid4().hex[:8]}"
#: Where each service serves Prometheus metrics in this run.
METRICS_PORTS = {name: free_port() for name in E2E_SERVICES}
EXCHANGE = f"oih.events.{NAMESPACE}"


def remove_bus_namespace(url: str) -> None:
    """Delete the exchange and event queues this run's services declared."""
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        for service in DEFAULT_PORTS:
            queues = ServiceQueues(f"{NAMESPACE}.{service}")
            names = [queues.main, queues.dead,
                     *(queues.retry(d) for d in RetryPolicy().delays_ms())]
            for name in names:
                channel.queue_delete(name)
        channel.queue_delete(topology.snapshots_queue(NAMESPACE))
        channel.exchange_delete(EXCHANGE)


def platform_env() -> dict[str, str]:
    """The settings of a test platform's services (also used by the fault tests)."""
    return {
        "OIH_IAM_ADMIN_USERNAME": ADMIN,
        "OIH_IAM_ADMIN_PASSWORD": ADMIN_PASSWORD,
        # Cheap password hashing and quick lockouts keep the suite fast; production uses
        # the defaults (argon2id, 64 MiB).
        "OIH_IAM_ARGON2_MEMORY_KIB": "1024",
        "OIH_IAM_ARGON2_TIME_COST": "1",
        "OIH_LOG_LEVEL": "WARNING",
    }


def databases(stack: ExitStack, services: list[str]) -> dict[str, str]:
    """`OIH_<SERVICE>_DATABASE_URL` of each service: fresh PostgreSQL databases (dropped when
    `stack` closes) as plain `postgresql://` URLs with OIH_E2E_DATABASE=postgresql, else
    SQLite files in the data directory (the services' default)."""
    if os.environ.get("OIH_E2E_DATABASE", "sqlite") != "postgresql":
        return {}
    return {f"OIH_{service.upper()}_DATABASE_URL":
            stack.enter_context(postgres.fresh_database()).replace(
                "postgresql+psycopg2://", "postgresql://")
            for service in services}


@contextmanager
def service_database(platform: Platform, service: str) -> Iterator[Connection]:
    """A connection to a service's own database, wherever this run keeps it."""
    url = platform.extra_env.get(f"OIH_{service.upper()}_DATABASE_URL",
                                 f"sqlite:///{platform.data_dir / service}.db")
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    data_dir = tmp_path_factory.mktemp("platform")
    with ExitStack() as stack:
        running = Platform(
            data_dir=data_dir,
            gateway_port=free_port(),
            admin_port=free_port(),
            ports={name: free_port() for name in DEFAULT_PORTS},
            services=E2E_SERVICES,
            extra_env={
                **platform_env(),
                **databases(stack, E2E_SERVICES),
                # A rotated-in signing key signs after 15 s (Envoy refetches the JWKS every
                # 10 s), so the rotation test sees the switch without waiting the default 60 s.
                "OIH_IAM_KEY_ANNOUNCE_SECONDS": "15",
                # Each e2e run uses its own event exchange, so it never sees another run's.
                "OIH_BUS_NAMESPACE": NAMESPACE,
                # Flows may call one loopback address: the tests' own HTTP servers listen there.
                "OIH_EGRESS_ALLOWED_NETWORKS": f"{RECEIVER_HOST}/32",
                # An unknown webhook flow answers 404 after this delay (1 s by default).
                "OIH_WEBHOOKS_NOT_FOUND_DELAY_SECONDS": "0.2",
                **{f"OIH_{name.upper()}_METRICS_PORT": str(port)
                   for name, port in METRICS_PORTS.items()},
            },
        )
        with running:
            yield running
            broker_url = running.rabbitmq_url
            shared_broker = running.private_broker is None
        if shared_broker:  # a private node went away with the platform, and its queues too
            remove_bus_namespace(broker_url)


@pytest.fixture(scope="session")
def rest(platform: Platform) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=platform.gateway_url, timeout=30) as client:
        yield client


def login(rest: httpx.Client, username: str, password: str) -> str:
    reply = rest.post("/v1/login", json={"username": username, "password": password})
    assert reply.status_code == 200, reply.text
    return str(reply.json()["access_token"])


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def admin_token(rest: httpx.Client) -> str:
    return login(rest, ADMIN, ADMIN_PASSWORD)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_tenant_with_admin(rest: httpx.Client, admin_token: str) -> tuple[str, str, str]:
    """(tenant name, tenant admin user name, tenant admin token)."""
    tenant = rest.post("/v1/tenants", json={"display_name": unique("acme")},
                       headers=auth(admin_token))
    assert tenant.status_code == 200, tenant.text
    username = f"{unique('owner')}@acme.example"
    user = rest.post("/v1/users", headers=auth(admin_token), json={
        "user": {"username": username, "tenant": tenant.json()["name"],
                 "roles": ["roles/tenant-admin"]},
        "password": PASSWORD,
    })
    assert user.status_code == 200, user.text
    return tenant.json()["name"], user.json()["name"], login(rest, username, PASSWORD)


@pytest.fixture(scope="session")
def integrator(rest: httpx.Client, admin_token: str) -> dict[str, str]:
    """A tenant admin and an integrator user of a fresh tenant, with tokens."""
    tenant, _, admin = create_tenant_with_admin(rest, admin_token)
    username = f"{unique('dev')}@acme.example"
    created = rest.post("/v1/users", headers=auth(admin), json={
        "user": {"username": username, "roles": ["roles/integrator"]}, "password": PASSWORD})
    assert created.status_code == 200, created.text
    return {"tenant": tenant, "tenant_admin": admin, "user": created.json()["name"],
            "token": login(rest, username, PASSWORD)}


def wait_state(rest: httpx.Client, token: str, flow: str, state: str,
               timeout: float = 10.0) -> dict[str, Any]:
    """Poll a flow until it reaches `state` (asserting it does within `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        current = rest.get(f"/v1/{flow}", headers=auth(token)).json()
        if current["state"] == state or time.monotonic() > deadline:
            assert current["state"] == state, (
                f"{flow} is {current['state']}, not {state}: {current.get('state_reason')!r}")
            return dict(current)
        time.sleep(0.1)


@pytest.fixture(scope="session")
def builtins(rest: httpx.Client, admin_token: str) -> dict[str, str]:
    """The built-in components the orchestrator registers at start: display name → name."""
    wanted = {"trigger", "transform", "sink", "reply", "http-request"}
    deadline = time.monotonic() + 30
    while True:
        found = rest.get("/v1/components", headers=auth(admin_token),
                         params={"filter": "access=PUBLIC", "page_size": 100}).json()
        names = {c["display_name"]: c["name"] for c in found.get("components", [])}
        if wanted <= names.keys() or time.monotonic() > deadline:
            assert wanted <= names.keys(), names
            return names
        time.sleep(0.2)


def sink_lines(platform: Platform, flow: str, step: str) -> list[dict[str, Any]]:
    path = Path(platform.data_dir) / "sinks" / flow.removeprefix("flows/") / f"{step}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_sink(platform: Platform, flow: str, step: str, count: int,
              timeout: float = 30.0) -> list[dict[str, Any]]:
    """The sink's lines once there are at least `count` (asserting it within `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = sink_lines(platform, flow, step)
        if len(lines) >= count or time.monotonic() > deadline:
            assert len(lines) >= count, lines
            return lines
        time.sleep(0.1)
