"""Flow Repository under test: a real gRPC server (pytest-grpc's real-server mode) with the
shared interceptors, on SQLite and on PostgreSQL, next to a real Component Repository server
that it asks about components over gRPC, exactly as in production (a service token plus the
caller's token in `x-oih-on-behalf-of`). Tokens come from a test issuer both servers trust."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from sqlmodel import Session, col, select

from oih.components.v1 import components_pb2 as cpb
from oih.components.v1 import components_pb2_grpc
from oih.flows.v1 import flows_pb2 as pb
from oih.flows.v1 import flows_pb2_grpc
from oih.secrets.v1 import secrets_pb2 as spb
from oih.secrets.v1 import secrets_pb2_grpc
from oih_components import server as components_server
from oih_flows.components import ComponentDirectory
from oih_flows.secrets import SecretDirectory
from oih_flows.server import Built, build
from oih_flows.servicer import FlowServicer
from oih_flows.settings import FlowsSettings
from oih_runtime import crypto
from oih_runtime import server as runtime_server
from oih_runtime import settings as runtime_settings
from oih_runtime.bus import OutboxEvent
from oih_runtime.clients import authenticated_channel
from oih_runtime.interceptors import server_interceptors
from oih_secrets import server as secrets_server
from tests.support.tokens import Caller, TestIssuer, caller_factory

FLOW_WRITER = ("flows.read", "flows.write", "flows.control", "flows.execute",
               "components.read", "components.create", "secrets.read", "secrets.write")

FLOWS_SETTINGS = FlowsSettings(transition_timeout=timedelta(seconds=120), sweep_interval=3600,
                               components_address="unused: the test passes its own client",
                               secrets_address="unused: the test passes its own client")


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def components_address(issuer: TestIssuer, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[str]:
    """A real Component Repository on its own SQLite database and a free port."""
    config = replace(runtime_settings.load("components", {}),
                     database_url=f"sqlite:///{tmp_path_factory.mktemp('c') / 'components.db'}",
                     data_dir=Path(tmp_path_factory.mktemp("components-data")))
    built = components_server.build(config, verifier=issuer.verifier)  # bus threads not started
    running = runtime_server.start(built.service, host="127.0.0.1", port=0, max_workers=4,
                                   grace=0.5)
    yield running.address
    running.stop()
    built.engine.dispose()


@pytest.fixture(scope="module")
def secrets_address(issuer: TestIssuer, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[str]:
    """A real Secrets service on its own SQLite database and a free port."""
    config = replace(runtime_settings.load("secrets", {}),
                     database_url=f"sqlite:///{tmp_path_factory.mktemp('s') / 'secrets.db'}",
                     data_dir=Path(tmp_path_factory.mktemp("secrets-data")))
    built = secrets_server.build(config, verifier=issuer.verifier,
                                 keyring=crypto.Keyring(crypto.new_master_key_line()))
    running = runtime_server.start(built.service, host="127.0.0.1", port=0, max_workers=4,
                                   grace=0.5)
    yield running.address
    running.stop()
    built.engine.dispose()


@pytest.fixture(scope="module")
def flows_service(database_url: str, issuer: TestIssuer, components_address: str,
                  secrets_address: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    config = replace(runtime_settings.load("flows", {}), database_url=database_url,
                     data_dir=Path(tmp_path_factory.mktemp("data")))
    # The flow service's own service-account token: a platform service may act on behalf.
    service_token = issuer.token(subject="service-accounts/oih-platform",
                                 tenant="tenants/platform", permissions=("all",), typ="service")
    channel = authenticated_channel(components_address, lambda: service_token)
    secrets_channel = authenticated_channel(secrets_address, lambda: service_token)
    built = build(config, FLOWS_SETTINGS, verifier=issuer.verifier,
                  components=ComponentDirectory(channel),
                  secrets=SecretDirectory(secrets_channel), bus=False)
    yield built
    channel.close()
    secrets_channel.close()
    built.engine.dispose()  # PostgreSQL: let the database be dropped


@pytest.fixture(scope="module")
def grpc_interceptors(flows_service: Built) -> list[grpc.ServerInterceptor]:
    return server_interceptors(flows_service.service.verifier)


@pytest.fixture(scope="module")
def grpc_add_to_server() -> Callable[..., None]:
    return flows_pb2_grpc.add_FlowServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer(flows_service: Built) -> FlowServicer:
    return flows_service.servicer


@pytest.fixture(scope="module")
def grpc_stub_cls() -> type[flows_pb2_grpc.FlowServiceStub]:
    return flows_pb2_grpc.FlowServiceStub


@pytest.fixture(scope="module")
def make_caller(issuer: TestIssuer) -> Callable[..., Caller]:
    return caller_factory(issuer, FLOW_WRITER)


@pytest.fixture(scope="module")
def components_stub(components_address: str) -> Iterator[components_pb2_grpc.ComponentServiceStub]:
    with grpc.insecure_channel(components_address) as channel:
        yield components_pb2_grpc.ComponentServiceStub(channel)


@pytest.fixture(scope="module")
def register_component(components_stub: components_pb2_grpc.ComponentServiceStub
                       ) -> Callable[..., str]:
    """Register a component through the real Component Repository; returns its name."""
    def register(caller: Caller, access: int = cpb.ACCESS_TENANT,
                 actions: list[cpb.ComponentFunction] | None = None) -> str:
        component = cpb.Component(
            display_name=f"comp-{uuid.uuid4().hex[:8]}", access=access,  # type: ignore[arg-type]
            python_entry_point=cpb.PythonEntryPoint(
                object_reference="oih_components.builtin.log:component"),
            triggers=[cpb.ComponentFunction(name="timer")],
            actions=actions or [cpb.ComponentFunction(name="log"),
                                cpb.ComponentFunction(name="transform")],
        )
        created = components_stub.CreateComponent(
            cpb.CreateComponentRequest(component=component), metadata=caller.md)
        return str(created.name)
    return register


@dataclass(frozen=True)
class Tenant:
    """A tenant with a flow author and a component its flows can use."""

    user: Caller
    component: str


@pytest.fixture
def tenant(make_caller: Callable[..., Caller], register_component: Callable[..., str]) -> Tenant:
    user = make_caller()
    return Tenant(user, register_component(user))


def two_node_flow(component: str, **fields: object) -> pb.Flow:
    """A valid flow: a timer trigger feeding a log action."""
    flow = pb.Flow(
        display_name=f"flow-{uuid.uuid4().hex[:6]}",
        graph=pb.Graph(
            nodes=[pb.Node(id="timer", component=component, function="timer"),
                   pb.Node(id="log", component=component, function="log")],
            edges=[pb.Edge(source="timer", target="log")],
        ),
    )
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(flow, key).extend(value)
        else:
            setattr(flow, key, value)
    return flow


def outbox(engine: object, subject: str) -> list[OutboxEvent]:
    """The outbox rows about `subject`, oldest first."""
    with Session(engine) as session:  # type: ignore[arg-type]
        return list(session.exec(select(OutboxEvent).where(OutboxEvent.subject == subject)
                                 .order_by(col(OutboxEvent.seq))).all())


@pytest.fixture(scope="module")
def secrets_stub(secrets_address: str) -> Iterator[secrets_pb2_grpc.SecretServiceStub]:
    with grpc.insecure_channel(secrets_address) as channel:
        yield secrets_pb2_grpc.SecretServiceStub(channel)


@pytest.fixture
def make_secret(secrets_stub: secrets_pb2_grpc.SecretServiceStub) -> Callable[..., str]:
    def make(caller: Caller, secret_type: int = spb.Secret.TYPE_API_KEY) -> str:
        value = struct_pb2.Struct()
        value.update({"key": "k"} if secret_type == spb.Secret.TYPE_HMAC_KEY
                     else {"api_key": "k"})
        created = secrets_stub.CreateSecret(spb.CreateSecretRequest(secret=spb.Secret(
            display_name="s", type=secret_type, value=value)), metadata=caller.md)  # type: ignore[arg-type]
        return str(created.name)
    return make
