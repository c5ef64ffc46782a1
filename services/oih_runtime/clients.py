"""Calling other services: channels, the service-account token that goes with every call,
and IAM's JWKS as a key source for token verification."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from oih.iam.v1 import iam_pb2, iam_pb2_grpc


class ServiceToken:
    """A service-account access token from IAM's client-credentials exchange, renewed before
    it expires (when less than a fifth of its lifetime, or 30 s, is left)."""

    def __init__(self, iam: iam_pb2_grpc.IamServiceStub, client_id: str, client_secret: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._iam = iam
        self._client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._token = ""
        self._renew_at = 0.0
        self._lock = threading.Lock()

    def get(self) -> str:
        with self._lock:
            if self._clock() >= self._renew_at:
                reply = self._iam.ExchangeToken(
                    iam_pb2.ExchangeTokenRequest(
                        client_id=self._client_id, client_secret=self._client_secret
                    ),
                    timeout=10,
                )
                lifetime = float(reply.expires_in)
                self._token = reply.access_token
                self._renew_at = self._clock() + max(lifetime - max(lifetime / 5, 30.0), 1.0)
            return self._token

    def invalidate(self) -> None:
        """Forget the token (for example after the server refused it)."""
        with self._lock:
            self._renew_at = 0.0


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, metadata: Any) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


class BearerTokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Attaches `authorization: Bearer <token>` from `token()` to every outgoing call."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [m for m in (details.metadata or []) if m[0] != "authorization"]
        metadata.append(("authorization", f"Bearer {self._token()}"))
        return _CallDetails(details, metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)


def on_behalf_of(caller_token: str) -> tuple[tuple[str, str]]:
    """Call metadata that makes the callee judge access for the user who called us."""
    from oih_runtime.interceptors import ON_BEHALF_OF

    return ((ON_BEHALF_OF, caller_token),)


#: Reconnect quickly to a restarted service (gRPC's default backoff grows to two minutes).
RECONNECT_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 200),
                     ("grpc.min_reconnect_backoff_ms", 200),
                     ("grpc.max_reconnect_backoff_ms", 2000))


def authenticated_channel(address: str, token: Callable[[], str]) -> grpc.Channel:
    """A channel to another service whose calls carry the service's token."""
    return grpc.intercept_channel(grpc.insecure_channel(address, options=RECONNECT_OPTIONS),
                                  BearerTokenInterceptor(token))


def iam_jwks_source(iam: iam_pb2_grpc.IamServiceStub) -> Callable[[], dict[str, Any]]:
    """A JWKS source for `tokens.KeyCache` that asks IAM over gRPC."""

    def fetch() -> dict[str, Any]:
        body = iam.GetJwks(iam_pb2.GetJwksRequest(), timeout=5)
        document = json.loads(body.data)
        assert isinstance(document, dict)
        return document

    return fetch
