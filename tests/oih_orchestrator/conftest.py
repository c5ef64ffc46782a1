"""Orchestrator under test: a private RabbitMQ (with the management API), a real Component
Repository over gRPC (the orchestrator calls it with a service token, as in production), the
orchestrator's real gRPC server and event bus, and real worker processes (local driver)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from oih.components.v1 import components_pb2_grpc
from oih.orchestrator.v1 import orchestrator_pb2_grpc
from oih_cli.broker import RABBITMQ_BIN, PrivateBroker
from oih_components import server as components_server
from oih_orchestrator.components import register_builtins
from oih_orchestrator.drivers.local import LocalDriver
from oih_orchestrator.management import Management
from oih_orchestrator.server import Built, build
from oih_orchestrator.settings import OrchestratorSettings
from oih_runtime import server as runtime_server
from oih_runtime import settings as runtime_settings
from oih_runtime.clients import authenticated_channel
from tests.oih_orchestrator.support import TENANT, EventBus
from tests.support.tokens import TestIssuer, bearer


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        pytest.skip("install the Debian package rabbitmq-server")
    node = PrivateBroker(Path(tmp_path_factory.mktemp("rabbitmq-orchestrator")))
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def management(broker: PrivateBroker) -> Management:
    return Management.for_broker(broker.management_url, broker.url)


@pytest.fixture(scope="session")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="session")
def service_token(issuer: TestIssuer) -> str:
    # The platform's service account: the orchestrator's own identity towards other services.
    return issuer.token(subject="service-accounts/oih-platform", tenant="tenants/platform",
                        permissions=("all",), typ="service")


@pytest.fixture(scope="session")
def components_address(issuer: TestIssuer, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("components")
    config = replace(runtime_settings.load("components", {}),
                     database_url=f"sqlite:///{folder / 'components.db'}", data_dir=folder)
    built = components_server.build(config, verifier=issuer.verifier)  # no bus threads
    running = runtime_server.start(built.service, host="127.0.0.1", port=0, max_workers=4,
                                   grace=0.5)
    yield running.address
    running.stop()
    built.engine.dispose()


@pytest.fixture(scope="session")
def components_channel(components_address: str, service_token: str) -> Iterator[grpc.Channel]:
    channel = authenticated_channel(components_address, lambda: service_token)
    yield channel
    channel.close()


@pytest.fixture(scope="session")
def builtins(components_channel: grpc.Channel) -> dict[str, str]:
    """Display name → component name of the built-ins (registered like the orchestrator does)."""
    return register_builtins(components_pb2_grpc.ComponentServiceStub(components_channel))


@dataclass
class Orchestrator:
    built: Built
    running: runtime_server.RunningServer
    data_dir: Path
    bus: EventBus
    channel: grpc.Channel
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub

    @property
    def driver(self) -> LocalDriver:
        assert isinstance(self.built.driver, LocalDriver)
        return self.built.driver

    def crash(self) -> None:
        """Stop the service the way a dying orchestrator would leave things: its threads end,
        its workers keep running."""
        self.running.stop()
        self.channel.close()
        self.bus.close()
        self.built.engine.dispose()


StartOrchestrator = Callable[..., Orchestrator]


def launch(broker: PrivateBroker, issuer: TestIssuer, components_channel: grpc.Channel,
           data_dir: Path, exchange: str, consumer: str = "orchestrator",
           reconcile_seconds: float = 1.0) -> Orchestrator:
    config = replace(runtime_settings.load("orchestrator", {}), rabbitmq_url=broker.url,
                     database_url=f"sqlite:///{data_dir / 'orchestrator.db'}",
                     data_dir=data_dir)
    own = OrchestratorSettings.from_env({
        "OIH_RABBITMQ_MANAGEMENT_URL": broker.management_url,
        "OIH_ORCHESTRATOR_RECONCILE_SECONDS": str(reconcile_seconds),
        "OIH_ORCHESTRATOR_START_TIMEOUT_SECONDS": "30"}, amqp_url=broker.url)
    # Short back-off, so a restart after a crash is seen within a test.
    driver = LocalDriver(data_dir, backoff_initial=0.2, backoff_max=1.0, max_crashes=3)
    built = build(config, own, verifier=issuer.verifier, components_channel=components_channel,
                  driver=driver, exchange=exchange, consumer_name=consumer)
    running = runtime_server.start(built.service, host="127.0.0.1", port=0, max_workers=8,
                                   grace=0.5)
    bus = EventBus(broker.url, exchange)
    built.start_background()
    assert built.consumer is not None
    built.consumer.ready.wait(30)
    channel = grpc.insecure_channel(running.address)
    return Orchestrator(built, running, data_dir, bus, channel,
                        orchestrator_pb2_grpc.OrchestratorServiceStub(channel))


def shutdown(orchestrators: list[Orchestrator]) -> None:
    """Stop the services and every worker they left (crashed ones' workers included)."""
    for orchestrator in orchestrators:
        orchestrator.running.stop()
    for orchestrator in orchestrators:
        for flow_id in orchestrator.driver.flows():
            orchestrator.driver.remove(flow_id)
        orchestrator.channel.close()
        with contextlib.suppress(Exception):  # already closed by crash()
            orchestrator.bus.close()
        orchestrator.built.engine.dispose()


@pytest.fixture
def start_orchestrator(broker: PrivateBroker, issuer: TestIssuer,
                       components_channel: grpc.Channel) -> Iterator[StartOrchestrator]:
    """Starts orchestrators for one test; all are stopped (workers too) after it."""
    started: list[Orchestrator] = []

    def start(data_dir: Path, exchange: str, consumer: str = "orchestrator") -> Orchestrator:
        started.append(launch(broker, issuer, components_channel, data_dir, exchange, consumer))
        return started[-1]

    yield start
    shutdown(started)


@pytest.fixture(scope="module")
def orchestrator(broker: PrivateBroker, issuer: TestIssuer, components_channel: grpc.Channel,
                 tmp_path_factory: pytest.TempPathFactory, builtins: dict[str, str]
                 ) -> Iterator[Orchestrator]:
    """One orchestrator for a module's tests (each test uses flows of its own)."""
    started = launch(broker, issuer, components_channel, tmp_path_factory.mktemp("orchestrator"),
                     f"test.oih.events.{uuid.uuid4().hex[:8]}")
    yield started
    shutdown([started])


@pytest.fixture(scope="session")
def user_md(issuer: TestIssuer) -> tuple[tuple[str, str]]:
    return bearer(issuer.token(subject="users/alice", tenant=TENANT,
                               permissions=("flows.read", "flows.execute")))


@pytest.fixture(scope="session")
def other_tenant_md(issuer: TestIssuer) -> tuple[tuple[str, str]]:
    return bearer(issuer.token(subject="users/mallory", tenant="tenants/evil",
                               permissions=("flows.read", "flows.execute")))
