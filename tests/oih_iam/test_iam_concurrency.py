"""IAM under concurrent calls, on a real server with a 16-thread pool (pytest-grpc's server has
one worker, which would serialize everything): no call may fail with INTERNAL, and concurrent
failed logins must all count towards the lock."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlmodel import select

from oih.iam.v1 import iam_pb2, iam_pb2_grpc
from oih_iam import models
from oih_iam.models import UserRow
from oih_iam.server import build
from oih_runtime import crypto, server
from oih_runtime import settings as runtime_settings
from oih_runtime.bus.models import TABLES as BUS_TABLES
from oih_runtime.db import make_engine, transaction
from tests.oih_iam.conftest import ADMIN, ADMIN_PASSWORD, FAST_IAM, bearer

THREADS = 16
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def iam(database_url: str, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[iam_pb2_grpc.IamServiceStub, str]]:
    config = replace(runtime_settings.load("iam", {}), database_url=database_url,
                     data_dir=Path(tmp_path_factory.mktemp("data")))
    built = build(config, FAST_IAM, keyring=crypto.Keyring(crypto.new_master_key_line()))
    running = server.start(built.service, host="127.0.0.1", port=0, max_workers=THREADS,
                           grace=1.0)
    channel = grpc.insecure_channel(running.address)
    try:
        yield iam_pb2_grpc.IamServiceStub(channel), database_url
    finally:
        channel.close()
        running.stop()


def _codes(calls: list[Callable[[], Any]]) -> list[grpc.StatusCode]:
    def run(call: Callable[[], Any]) -> grpc.StatusCode:
        try:
            call()
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(run, calls))


def test_concurrent_create_user_and_login_never_fail_internally(
        iam: tuple[iam_pb2_grpc.IamServiceStub, str]) -> None:
    stub, _ = iam
    admin = stub.Login(iam_pb2.LoginRequest(username=ADMIN, password=ADMIN_PASSWORD)).access_token
    usernames = [f"u{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(THREADS * 2)]

    def create(username: str) -> Callable[[], Any]:
        return lambda: stub.CreateUser(iam_pb2.CreateUserRequest(
            user=iam_pb2.User(username=username, roles=["roles/integrator"]), password=PASSWORD),
            metadata=bearer(admin))

    def login(username: str, password: str = PASSWORD) -> Callable[[], Any]:
        return lambda: stub.Login(iam_pb2.LoginRequest(username=username, password=password))

    assert set(_codes([create(u) for u in usernames])) == {grpc.StatusCode.OK}
    mixed = [call for u in usernames for call in (login(u), login(u, "wrong password!!"))]
    codes = _codes(mixed)
    assert grpc.StatusCode.INTERNAL not in codes
    assert codes[0::2] == [grpc.StatusCode.OK] * len(usernames)


def test_concurrent_creates_of_one_username_answer_already_exists(
        iam: tuple[iam_pb2_grpc.IamServiceStub, str]) -> None:
    stub, _ = iam
    admin = stub.Login(iam_pb2.LoginRequest(username=ADMIN, password=ADMIN_PASSWORD)).access_token
    username = f"twin-{uuid.uuid4().hex[:6]}@example.com"
    codes = _codes([lambda: stub.CreateUser(iam_pb2.CreateUserRequest(
        user=iam_pb2.User(username=username), password=PASSWORD), metadata=bearer(admin))
    ] * THREADS)
    assert sorted(c.name for c in codes) == ["ALREADY_EXISTS"] * (THREADS - 1) + ["OK"]
    name = f"same-{uuid.uuid4().hex[:6]}"
    codes = _codes([lambda: stub.CreateTenant(iam_pb2.CreateTenantRequest(
        tenant=iam_pb2.Tenant(display_name=name)), metadata=bearer(admin))] * THREADS)
    assert sorted(c.name for c in codes) == ["ALREADY_EXISTS"] * (THREADS - 1) + ["OK"]


def test_concurrent_failed_logins_all_count_towards_the_lock(
        iam: tuple[iam_pb2_grpc.IamServiceStub, str]) -> None:
    stub, database_url = iam
    admin = stub.Login(iam_pb2.LoginRequest(username=ADMIN, password=ADMIN_PASSWORD)).access_token
    username = f"target-{uuid.uuid4().hex[:6]}@example.com"
    stub.CreateUser(iam_pb2.CreateUserRequest(user=iam_pb2.User(username=username),
                                              password=PASSWORD), metadata=bearer(admin))
    guesses = 2  # below the lock threshold (3), so every guess is checked and must be counted
    engine = make_engine(database_url, tables=(*models.TABLES, *BUS_TABLES))
    try:
        for _ in range(4):
            codes = _codes([lambda: stub.Login(iam_pb2.LoginRequest(
                username=username, password="a wrong guess!"))] * guesses)
            assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED}
            with transaction(engine) as session:
                row = session.exec(select(UserRow).where(UserRow.username == username)).one()
                counted = row.failed_logins
                row.failed_logins, row.locked_until = 0, None
                session.add(row)
            assert counted == guesses
    finally:
        engine.dispose()
