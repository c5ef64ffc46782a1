"""Outbound HTTP on a tenant's behalf, guarded against server-side request forgery.

A flow's configuration names URLs (the `http-request` component, polling triggers, webhook
replies): a tenant must not be able to point them at the platform's own internals — Envoy's
admin interface, the services' gRPC ports, the broker's management API, a cloud's metadata
service. So every connection is checked *after* DNS resolution, against the address it will
really connect to, and again for every redirect (each hop opens a new guarded connection):

- refused: loopback, private (RFC 1918, unique-local), link-local (which holds the
  169.254.169.254 metadata service), shared (100.64/10), unspecified, multicast, reserved and
  every other non-global address, also when wrapped in IPv6 (`::ffff:127.0.0.1`, 6to4);
- allowed anyway: addresses in `OIH_EGRESS_ALLOWED_NETWORKS` (comma-separated CIDRs, e.g.
  `10.20.0.0/16,127.0.0.1/32`), a setting for the platform administrator (an on-premise CRM,
  or a test server on loopback).

The connection goes to the address that was checked (no second lookup a DNS server could
answer differently), and only http and https are spoken (no proxies from the environment, no
ftp or file redirects). A refusal raises `EgressRefused`, which is not retried.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import urllib.request
from collections.abc import Iterable
from typing import Any

from .errors import NonRetryableError

ALLOWED_NETWORKS_ENV = "OIH_EGRESS_ALLOWED_NETWORKS"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressRefused(NonRetryableError):
    """The URL leads to an address a flow may not reach."""


def allowed_networks(env: dict[str, str] | None = None) -> list[Network]:
    """The administrator's allow-list (`OIH_EGRESS_ALLOWED_NETWORKS`)."""
    text = (os.environ if env is None else env).get(ALLOWED_NETWORKS_ENV, "")
    return [ipaddress.ip_network(part.strip(), strict=False)
            for part in text.split(",") if part.strip()]


def _unwrapped(address: Address) -> Address:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo), else itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
    return address


def permitted(address: Address, allowed: Iterable[Network] = ()) -> bool:
    """Whether a flow may connect to `address`."""
    if any(address in network for network in allowed):
        return True
    inner = _unwrapped(address)
    if inner is not address and any(inner in network for network in allowed):
        return True
    return all(a.is_global and not a.is_multicast for a in {address, inner})


def _guarded_connection(address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
                        source_address: Any = None) -> socket.socket:
    """`socket.create_connection`, but to checked addresses only."""
    host, port = address
    allowed = allowed_networks()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as unresolved:
        raise OSError(f"cannot resolve {host!r}: {unresolved}") from None
    for *_, sockaddr in infos:
        resolved = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if not permitted(resolved, allowed):
            raise EgressRefused(
                f"{host} resolves to {resolved}, an internal address flows may not reach "
                f"(a platform administrator can allow it with {ALLOWED_NETWORKS_ENV})")
    last_error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
    raise last_error or OSError(f"no address for {host!r}")


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # http.client's own hook for opening the socket (HTTPS wraps what it returns in TLS,
        # still verifying the certificate against the host name).
        self._create_connection = _guarded_connection


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _guarded_connection


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_GuardedHTTPConnection, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_GuardedHTTPSConnection, req)


def _opener() -> urllib.request.OpenerDirector:
    # Built by hand rather than with build_opener: that one adds proxies from the environment
    # and the ftp, file and data handlers, which a redirect could reach unguarded.
    opener = urllib.request.OpenerDirector()
    for handler in (_GuardedHTTPHandler(), _GuardedHTTPSHandler(),
                    urllib.request.HTTPRedirectHandler(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler()):
        opener.add_handler(handler)
    return opener


def urlopen(request: urllib.request.Request | str, timeout: float = 30.0) -> Any:
    """`urllib.request.urlopen` for URLs a tenant chose: refuses internal addresses (also
    behind redirects) with `EgressRefused`; otherwise answers and fails as urlopen does."""
    return _opener().open(request, timeout=timeout)
