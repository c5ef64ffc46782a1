"""Real RS256 access tokens for servicer tests that do not run IAM.

The service under test verifies them exactly as in production (a TokenVerifier over a JWKS);
only the issuer is this test key instead of IAM.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from oih_runtime.settings import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from oih_runtime.tokens import KeyCache, TokenVerifier


class TestIssuer:
    __test__ = False  # not a test class, despite the name

    def __init__(self) -> None:
        self.kid = uuid.uuid4().hex[:8]
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]}
        self.verifier = TokenVerifier(KeyCache(lambda: self.jwks), issuer=DEFAULT_ISSUER,
                                      audience=DEFAULT_AUDIENCE)

    def token(self, subject: str = "users/alice", tenant: str = "tenants/t1",
              permissions: tuple[str, ...] = (), typ: str = "user", **extra: Any) -> str:
        now = int(time.time())
        claims = {"iss": DEFAULT_ISSUER, "aud": DEFAULT_AUDIENCE, "sub": subject,
                  "tenant": tenant, "permissions": list(permissions), "typ": typ,
                  "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex, **extra}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@dataclass(frozen=True)
class Caller:
    """A principal with its token and the call metadata carrying it."""

    subject: str
    tenant: str
    token: str

    @property
    def md(self) -> tuple[tuple[str, str]]:
        return bearer(self.token)


def caller_factory(issuer: TestIssuer, default_permissions: tuple[str, ...]
                   ) -> Callable[..., Caller]:
    """`make(tenant="", permissions=default, *, subject="", typ="user") -> Caller`; a fresh
    subject and tenant unless given."""

    def make(tenant: str = "", permissions: tuple[str, ...] = default_permissions, *,
             subject: str = "", typ: str = "user") -> Caller:
        subject = subject or f"users/{uuid.uuid4().hex[:8]}"
        tenant = tenant or f"tenants/{uuid.uuid4().hex[:8]}"
        token = issuer.token(subject=subject, tenant=tenant, permissions=permissions, typ=typ)
        return Caller(subject, tenant, token)

    return make
