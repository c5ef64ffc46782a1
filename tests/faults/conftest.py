"""The platform the fault tests break: every service as a real process (supervised, as `oih
up` runs them), Envoy, and a private RabbitMQ node that a test may stop — never the system one,
which other work on this machine uses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from oih_cli.broker import PrivateBroker
from oih_cli.platform import Platform
from oih_runtime.settings import DEFAULT_PORTS
from tests.e2e.conftest import (
    ADMIN,
    ADMIN_PASSWORD,
    E2E_SERVICES,
    auth,
    create_tenant_with_admin,
    login,
    platform_env,
)
from tests.faults.support import COMPONENTS, builtin_components
from tests.gateway.conftest import free_port


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    node = PrivateBroker(Path(tmp_path_factory.mktemp("faults-rabbitmq")))
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def platform(broker: PrivateBroker, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Platform]:
    running = Platform(
        data_dir=tmp_path_factory.mktemp("faults-platform"),
        gateway_port=free_port(),
        admin_port=free_port(),
        ports={name: free_port() for name in DEFAULT_PORTS},
        # Two Flow Repository replicas behind Envoy, for the rolling restart.
        replicas={"flows": [free_port()]},
        services=E2E_SERVICES,
        rabbitmq_url=broker.url,
        management_url=broker.management_url,
        extra_env={**platform_env(), "OIH_ORCHESTRATOR_RECONCILE_SECONDS": "2"},
    )
    with running:
        yield running


@pytest.fixture(scope="session")
def rest(platform: Platform) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=platform.gateway_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def token(rest: httpx.Client) -> str:
    """A tenant admin's token (a fresh tenant)."""
    _, _, tenant_admin = create_tenant_with_admin(rest, login(rest, ADMIN, ADMIN_PASSWORD))
    return tenant_admin


@pytest.fixture(scope="session")
def components(rest: httpx.Client, token: str) -> dict[str, str]:
    """Display name → component name: the built-ins and the fault tests' own components."""
    found = builtin_components(rest, token)
    for function in ("work", "picky"):
        created = rest.post("/v1/components", headers=auth(token), json={
            "display_name": f"faults {function}", "access": "ACCESS_TENANT",
            "python_entry_point": {"object_reference": COMPONENTS},
            "actions": [{"name": function}]})
        assert created.status_code == 200, created.text
        found[function] = created.json()["name"]
    return found
