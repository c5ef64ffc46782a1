"""Secrets service under test: a real gRPC server (pytest-grpc's real-server mode) with the
shared interceptors, on SQLite and on PostgreSQL, and a real master key (a file, as `oih up`
makes it). Tokens come from a test issuer the server trusts as it would trust IAM's JWKS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from oih.secrets.v1 import secrets_pb2_grpc
from oih_runtime import crypto
from oih_runtime import settings as runtime_settings
from oih_runtime.interceptors import server_interceptors
from oih_secrets.server import Built, build
from oih_secrets.servicer import SecretServicer
from tests.support.tokens import Caller, TestIssuer, caller_factory

WRITER = ("secrets.read", "secrets.write")


@pytest.fixture(scope="module")
def issuer() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def master_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(tmp_path_factory.mktemp("keys")) / "master-key"
    path.write_text(crypto.new_master_key_line() + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def secrets_service(database_url: str, issuer: TestIssuer, master_key_file: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    config = replace(runtime_settings.load("secrets", {}), database_url=database_url,
                     data_dir=Path(tmp_path_factory.mktemp("data")))
    built = build(config, verifier=issuer.verifier,
                  keyring=crypto.Keyring.from_env(
                      "secrets", {"OIH_SECRETS_MASTER_KEY_FILE": str(master_key_file)}))
    yield built
    built.engine.dispose()


@pytest.fixture(scope="module")
def grpc_interceptors(secrets_service: Built) -> list[grpc.ServerInterceptor]:
    return server_interceptors(secrets_service.service.verifier)


@pytest.fixture(scope="module")
def grpc_add_to_server() -> Callable[..., None]:
    return secrets_pb2_grpc.add_SecretServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer(secrets_service: Built) -> SecretServicer:
    return secrets_service.servicer


@pytest.fixture(scope="module")
def grpc_stub_cls() -> type[secrets_pb2_grpc.SecretServiceStub]:
    return secrets_pb2_grpc.SecretServiceStub


@pytest.fixture(scope="module")
def make_caller(issuer: TestIssuer) -> Callable[..., Caller]:
    return caller_factory(issuer, WRITER)
