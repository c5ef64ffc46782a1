"""Issuing access tokens."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

from oih_iam.keys import KeyStore


@dataclass(frozen=True)
class Issued:
    token: str
    expires_in: int
    token_id: str


class TokenIssuer:
    def __init__(self, keys: KeyStore, issuer: str, audience: str, lifetime_seconds: int):
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime_seconds

    def issue(self, *, subject: str, tenant: str, typ: str, roles: list[str],
              permissions: list[str], not_before: int = 0) -> Issued:
        """`not_before`: the subject's revocation cut-off. A token issued in the same second as
        a revocation carries that cut-off as `iat`, so the revocation does not refuse it."""
        kid, key = self.keys.signing_key()
        now = max(int(time.time()), not_before)
        token_id = uuid.uuid4().hex
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "tenant": tenant,
            "typ": typ,
            "roles": roles,
            "permissions": sorted(permissions),
            "iat": now,
            "exp": now + self.lifetime,
            "jti": token_id,
        }
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})
        return Issued(token=token, expires_in=self.lifetime, token_id=token_id)
