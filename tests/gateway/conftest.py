"""Reusable helpers to run the real Envoy gateway in tests.

Other suites can import these (`from tests.gateway.conftest import start_gateway`) to put a
gateway in front of their own servers:

    base_url, envoy = start_gateway(tmp_path, {"oih.flows.v1.FlowService": "127.0.0.1:5123"})
    try:
        ...  # httpx against base_url, or grpc.insecure_channel(base_url[7:])
    finally:
        envoy.stop()
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from oih_gateway import layout
from oih_gateway.envoy import EnvoyProcess
from oih_gateway.render import read_rpcs, write_envoy_config

DESCRIPTOR_SET = layout.DESCRIPTOR_SET
ISSUER = "oih-iam"
AUDIENCE = "oih-platform"


def free_port() -> int:
    """A TCP port that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descriptor_services(descriptor_path: Path = DESCRIPTOR_SET) -> list[str]:
    """Every oih gRPC service full name in the descriptor set."""
    return sorted({rpc.service for rpc in read_rpcs(descriptor_path.read_bytes())})


def all_upstreams(
    overrides: Mapping[str, str], default: str | None = None, descriptor_path: Path = DESCRIPTOR_SET
) -> dict[str, str]:
    """Every service of the descriptor: `overrides` where given, else `default` (by default a
    closed port, so those services answer 503)."""
    fallback = default or f"127.0.0.1:{free_port()}"
    return {s: overrides.get(s, fallback) for s in descriptor_services(descriptor_path)}


def start_gateway(
    tmp_path: Path,
    upstreams: Mapping[str, str],
    *,
    descriptor_path: Path = DESCRIPTOR_SET,
    wait_for_jwks: bool = True,
    timeout: float = 15.0,
    **options: Any,
) -> tuple[str, EnvoyProcess]:
    """Render a config for `upstreams`, start Envoy on free ports and wait until it is ready.

    With `wait_for_jwks`, also wait until Envoy has fetched the JWKS from the IAM upstream (the
    fetch is asynchronous; before it lands every token is refused). Returns the base URL
    (`http://127.0.0.1:PORT`) and the running process; the caller stops it.
    """
    listen_port, admin_port = free_port(), free_port()
    options.setdefault("issuer", ISSUER)
    options.setdefault("audience", AUDIENCE)
    config_path = tmp_path / f"envoy-{listen_port}.yaml"
    write_envoy_config(
        config_path,
        descriptor_path.read_bytes(),
        upstreams,
        listen_host="127.0.0.1",
        listen_port=listen_port,
        admin_port=admin_port,
        descriptor_path=str(descriptor_path.resolve()),
        **options,
    )
    envoy = EnvoyProcess(
        config_path, admin_port=admin_port, log_path=config_path.with_suffix(".log")
    )
    envoy.start()
    try:
        envoy.wait_ready(timeout)
        if wait_for_jwks:
            wait_jwks_fetched(envoy, timeout)
    except BaseException:
        envoy.stop()
        raise
    return f"http://127.0.0.1:{listen_port}", envoy


def jwks_fetch_counts(envoy: EnvoyProcess) -> tuple[int, int]:
    return envoy.jwks_fetch_counts()


def wait_jwks_fetched(envoy: EnvoyProcess, timeout: float = 15.0) -> None:
    envoy.wait_jwks_fetched(timeout)


def decode_payload_header(value: str) -> dict[str, Any]:
    """Decode `x-oih-jwt-payload` (unpadded base64url JSON, as jwt_authn forwards it)."""
    padded = value + "=" * (-len(value) % 4)
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return decoded


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., tuple[str, EnvoyProcess]]]:
    """`start(upstreams, **options) -> (base_url, envoy)`; every gateway stops at teardown."""
    started: list[EnvoyProcess] = []

    def start(upstreams: Mapping[str, str], **options: Any) -> tuple[str, EnvoyProcess]:
        base_url, envoy = start_gateway(tmp_path, upstreams, **options)
        started.append(envoy)
        return base_url, envoy

    yield start
    for envoy in started:
        envoy.stop()
