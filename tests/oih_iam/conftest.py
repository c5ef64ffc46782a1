"""IAM servicer under test: a real gRPC server (pytest-grpc's real-server mode) with the
shared interceptors, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from oih.iam.v1 import iam_pb2, iam_pb2_grpc
from oih_iam.server import Built, build
from oih_iam.servicer import IamServicer
from oih_iam.settings import IamSettings
from oih_runtime import crypto
from oih_runtime import settings as runtime_settings
from oih_runtime.interceptors import server_interceptors

ADMIN = "admin@oih.test"
ADMIN_PASSWORD = "admin-password-1234"

FAST_IAM = IamSettings(
    token_lifetime=timedelta(minutes=15),
    admin_username=ADMIN,
    admin_password=ADMIN_PASSWORD,
    argon2_time_cost=1,
    argon2_memory_kib=1024,
    lock_after_failures=3,
    lock_base_seconds=60,
    lock_max_seconds=600,
)


@pytest.fixture(scope="module")
def iam_service(database_url: str, tmp_path_factory: pytest.TempPathFactory
                ) -> Built:
    config = replace(runtime_settings.load("iam", {}), database_url=database_url,
                     data_dir=Path(tmp_path_factory.mktemp("data")))
    return build(config, FAST_IAM, keyring=crypto.Keyring(crypto.new_master_key_line()))


@pytest.fixture(scope="module")
def grpc_interceptors(iam_service: Built) -> list[grpc.ServerInterceptor]:
    return server_interceptors(iam_service.service.verifier)


@pytest.fixture(scope="module")
def grpc_add_to_server() -> Callable[..., None]:
    return iam_pb2_grpc.add_IamServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer(iam_service: Built) -> IamServicer:
    return iam_service.servicer


@pytest.fixture(scope="module")
def grpc_stub_cls() -> type[iam_pb2_grpc.IamServiceStub]:
    return iam_pb2_grpc.IamServiceStub


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def admin_token(grpc_stub: iam_pb2_grpc.IamServiceStub) -> str:
    reply = grpc_stub.Login(iam_pb2.LoginRequest(username=ADMIN, password=ADMIN_PASSWORD))
    return str(reply.access_token)
