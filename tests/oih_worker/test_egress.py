"""The SSRF guard of outbound HTTP (`oih_sdk.egress`, used by the http-request component): internal
addresses are refused after DNS resolution and behind redirects, unless the administrator's
allow-list (`OIH_EGRESS_ALLOWED_NETWORKS`) names them. Real sockets and a real HTTP server."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from oih_sdk import Message, is_retryable, load_function
from oih_sdk.egress import ALLOWED_NETWORKS_ENV, EgressRefused, permitted, urlopen


class Server(ThreadingHTTPServer):
    hits: int = 0


@pytest.fixture
def server() -> Iterator[Server]:
    """An HTTP server on 127.0.0.2 whose /hop redirects to the same port on 127.0.0.1."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            running.hits += 1
            if self.path == "/hop":
                self.send_response(302)
                self.send_header("location", f"http://127.0.0.1:{running.server_port}/inside")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    running = Server(("0.0.0.0", 0), Handler)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.100.100.200",
    "0.0.0.0", "224.0.0.1", "::1", "fd00:ec2::254", "fe80::1", "::ffff:127.0.0.1",
    "2002:7f00:1::1", "::",
])
def test_internal_addresses_are_not_permitted(address: str) -> None:
    assert not permitted(ipaddress.ip_address(address))


def test_public_addresses_and_allow_listed_networks_are_permitted() -> None:
    assert permitted(ipaddress.ip_address("93.184.215.14"))
    assert permitted(ipaddress.ip_address("2606:4700::1111"))
    allowed = [ipaddress.ip_network("10.20.0.0/16")]
    assert permitted(ipaddress.ip_address("10.20.3.4"), allowed)
    assert not permitted(ipaddress.ip_address("10.21.3.4"), allowed)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "127.1"])
def test_loopback_is_refused_after_resolution_and_never_contacted(
        server: Server, host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOWED_NETWORKS_ENV, raising=False)
    with pytest.raises(EgressRefused, match="internal address"):
        urlopen(f"http://{host}:{server.server_port}/", timeout=5)
    assert server.hits == 0


def test_allow_listed_range_is_reached(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOWED_NETWORKS_ENV, "127.0.0.0/8")
    with urlopen(f"http://127.0.0.1:{server.server_port}/", timeout=5) as answer:
        assert answer.read() == b"ok"


def test_every_redirect_is_checked(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only 127.0.0.2 is allowed: its redirect to 127.0.0.1 is refused before connecting."""
    monkeypatch.setenv(ALLOWED_NETWORKS_ENV, "127.0.0.2/32")
    with pytest.raises(EgressRefused, match=r"127\.0\.0\.1"):
        urlopen(f"http://127.0.0.2:{server.server_port}/hop", timeout=5)
    assert server.hits == 1  # the allowed first hop only


def test_other_schemes_are_not_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOWED_NETWORKS_ENV, "127.0.0.0/8")
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/x"):
        with pytest.raises(Exception, match="unknown url type"):
            urlopen(url, timeout=5)


def test_http_request_component_refuses_internal_urls_without_retrying(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOWED_NETWORKS_ENV, raising=False)
    fn = load_function("oih_builtins.http_request:component", "request")
    with pytest.raises(EgressRefused) as refused:
        fn(Message(data={"a": 1}), {"url": f"http://localhost:{server.server_port}/"}, {})
    assert not is_retryable(refused.value)
    assert server.hits == 0
