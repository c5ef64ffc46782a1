"""How a platform service (other than IAM) knows who calls it and who it is itself.

- `PlatformIdentity.verifier` checks callers' tokens against IAM's JWKS (cached) and against
  the revocation list, which `feed` keeps current (start it with the service's background work).
- `PlatformIdentity.token` is the service's own service-account token for calls to other
  services, renewed before it expires.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from oih.events.v1 import iam_pb2 as iam_events
from oih.iam.v1 import iam_pb2, iam_pb2_grpc
from oih_runtime.bus.topology import DEFAULT_EXCHANGE
from oih_runtime.clients import ServiceToken, iam_jwks_source
from oih_runtime.revocation import RevocationList
from oih_runtime.revocation_feed import RevocationFeed
from oih_runtime.settings import ServiceSettings
from oih_runtime.tokens import KeyCache, TokenVerifier


@dataclass
class PlatformIdentity:
    iam: iam_pb2_grpc.IamServiceStub
    token: ServiceToken
    verifier: TokenVerifier
    feed: RevocationFeed


def platform_identity(settings: ServiceSettings, *,
                      exchange: str = DEFAULT_EXCHANGE) -> PlatformIdentity:
    iam = iam_pb2_grpc.IamServiceStub(grpc.insecure_channel(settings.iam_address))
    token = ServiceToken(iam, settings.client_id, settings.client_secret)
    revocations = RevocationList()
    verifier = TokenVerifier(KeyCache(iam_jwks_source(iam)), issuer=settings.jwt_issuer,
                             audience=settings.jwt_audience, revocations=revocations)

    def load() -> Iterable[iam_events.TokensRevoked]:
        reply = iam.ListRevocations(iam_pb2.ListRevocationsRequest(), timeout=10,
                                    metadata=(("authorization", f"Bearer {token.get()}"),))
        return list(reply.revocations)

    feed = RevocationFeed(revocations, load, settings.rabbitmq_url, exchange,
                          name=f"oih-{settings.service}-revocations")
    return PlatformIdentity(iam, token, verifier, feed)
