"""Component Repository under test: a real gRPC server (pytest-grpc's real-server mode) with
the shared interceptors, on SQLite and on PostgreSQL. Tokens come from a test issuer whose
keys the server trusts, exactly as it would trust IAM's JWKS."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from oih.components.v1 import components_pb2 as pb
from oih.components.v1 import components_pb2_grpc
from oih_components.server import Built, build
from oih_components.servicer import ComponentServicer
from oih_runtime import settings as runtime_settings
from oih_runtime.interceptors import server_interceptors
from tests.support.tokens import Caller, TestIssuer, caller_factory

WRITER = ("components.read", "components.create", "components.update", "components.delete")
TENANT_ADMIN = (*WRITER, "tenant.account.update")


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def components_service(database_url: str, issuer: TestIssuer,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    config = replace(runtime_settings.load("components", {}), database_url=database_url,
                     data_dir=Path(tmp_path_factory.mktemp("data")))
    built = build(config, verifier=issuer.verifier)  # the bus threads are not started
    yield built
    built.engine.dispose()  # PostgreSQL: let the database be dropped


@pytest.fixture(scope="module")
def grpc_interceptors(components_service: Built) -> list[grpc.ServerInterceptor]:
    return server_interceptors(components_service.service.verifier)


@pytest.fixture(scope="module")
def grpc_add_to_server() -> Callable[..., None]:
    return components_pb2_grpc.add_ComponentServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer(components_service: Built) -> ComponentServicer:
    return components_service.servicer


@pytest.fixture(scope="module")
def grpc_stub_cls() -> type[components_pb2_grpc.ComponentServiceStub]:
    return components_pb2_grpc.ComponentServiceStub


@pytest.fixture(scope="module")
def make_caller(issuer: TestIssuer) -> Callable[..., Caller]:
    return caller_factory(issuer, WRITER)


def entry_point_component(**fields: object) -> pb.Component:
    """A valid component for the local driver; keyword arguments override its fields."""
    component = pb.Component(
        display_name=f"comp-{uuid.uuid4().hex[:8]}", description="test component",
        version="1.0.0",
        python_entry_point=pb.PythonEntryPoint(object_reference="oih_components.builtin.log:component"),
        triggers=[pb.ComponentFunction(name="timer")],
        actions=[pb.ComponentFunction(name="log"), pb.ComponentFunction(name="transform")],
    )
    for key, value in fields.items():
        if isinstance(value, list):
            component.ClearField(key)  # type: ignore[arg-type]
            getattr(component, key).extend(value)
        elif hasattr(value, "DESCRIPTOR"):
            getattr(component, key).CopyFrom(value)
        else:
            setattr(component, key, value)
    return component
