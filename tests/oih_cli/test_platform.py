"""`oih up`'s platform refuses to start on a port another program listens on, naming the port
and the setting that moves it, before it starts anything."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from oih_cli.platform import Platform, PlatformError, port_taken
from oih_runtime.settings import DEFAULT_PORTS, configured_ports
from tests.gateway.conftest import free_port


def test_a_taken_port_stops_the_start_with_a_clear_message(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as other_platform:
        taken = other_platform.getsockname()[1]
        assert port_taken(taken)
        ports = {name: free_port() for name in DEFAULT_PORTS}
        ports["flows"] = taken
        platform = Platform(data_dir=tmp_path, gateway_port=free_port(), admin_port=taken,
                            ports=ports, services=["iam", "flows"])
        with pytest.raises(PlatformError) as refused:
            platform.start()
    message = str(refused.value)
    assert f"{taken} (OIH_FLOWS_PORT)" in message
    assert f"{taken} (OIH_GATEWAY_ADMIN_PORT)" in message
    assert platform.children == {}  # nothing was started
    assert not (tmp_path / "logs" / "iam.log").exists()


def test_a_free_port_is_not_taken() -> None:
    assert not port_taken(free_port())


def test_oih_up_honours_the_port_settings() -> None:
    ports = configured_ports({"OIH_FLOWS_PORT": "6123"})
    assert ports["flows"] == 6123
    assert ports["iam"] == DEFAULT_PORTS["iam"]
