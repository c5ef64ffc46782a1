"""Access-token verification against IAM's JSON Web Key Set.

Every service verifies every token itself (defense in depth: a caller that bypasses Envoy
gets nothing). Keys are cached; a token with an unknown `kid` triggers one refresh (at most
once a second), which is how a rotated key becomes known without a restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import jwt

from oih_runtime.errors import Unauthenticated
from oih_runtime.principal import Principal
from oih_runtime.revocation import RevocationList

log = logging.getLogger(__name__)

#: Only RSA signatures: a token claiming `none` or an HMAC algorithm is refused before any key
#: is tried (the classic "HS256 signed with the public key" attack).
ALGORITHMS = ["RS256"]
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]
#: Verified tokens kept (a few hundred bytes each).
VERIFIED_CACHE_SIZE = 10_000

JwksSource = Callable[[], dict[str, Any]]


class KeyCache:
    """Public keys by `kid`, refreshed from a JWKS source."""

    def __init__(self, source: JwksSource, max_age: float = 300.0, min_refresh: float = 1.0):
        self._source = source
        self._max_age = max_age
        self._min_refresh = min_refresh
        self._keys: dict[str, Any] = {}
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def key(self, kid: str) -> Any:
        now = time.monotonic()
        stale = now - self._fetched_at > self._max_age
        if kid not in self._keys or stale:
            self._refresh(now, force=stale)
        try:
            return self._keys[kid]
        except KeyError:
            raise Unauthenticated("token signed by an unknown key", reason="UNKNOWN_KEY") from None

    def _refresh(self, now: float, force: bool) -> None:
        with self._lock:
            if not force and now - self._fetched_at < self._min_refresh:
                return
            try:
                document = self._source()
            except Exception:
                log.warning("could not fetch the JWKS; keeping the cached keys", exc_info=True)
                self._fetched_at = now  # do not hammer IAM while it is down
                return
            self._keys = {
                jwk["kid"]: jwt.PyJWK.from_dict(jwk).key
                for jwk in document.get("keys", [])
                if jwk.get("kid")
            }
            self._fetched_at = now


class TokenVerifier:
    """Checks signature, algorithm, issuer, audience, expiry and revocation of a token."""

    def __init__(
        self,
        keys: KeyCache,
        *,
        issuer: str,
        audience: str,
        leeway: float = 5.0,
        revocations: RevocationList | None = None,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.revocations = revocations or RevocationList()
        #: token -> (its principal, the key that verified it); see `verify`.
        self._verified: dict[str, tuple[Principal, str, Any]] = {}

    def verify(self, token: str) -> Principal:
        """The token's principal. A token verified before is taken from a small cache (an RS256
        check costs more than the rest of a typical call) — only while its key is still
        published, it has not expired and it is not revoked, all checked on every use."""
        cached = self._verified.get(token)
        if cached is not None:
            principal, kid, key = cached
            if (self._published(kid) is key and principal.expires_at + self.leeway > time.time()
                    and not self.revocations.is_revoked(principal)):
                return principal
            self._verified.pop(token, None)
        principal = self._verify(token)
        kid = str(jwt.get_unverified_header(token).get("kid", ""))
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()  # a simple bound; re-verifying is only slower
        self._verified[token] = (principal, kid, self.keys.key(kid))
        return principal

    def _published(self, kid: str) -> Any:
        try:
            return self.keys.key(kid)
        except Unauthenticated:
            return None

    def _verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("malformed access token", reason="INVALID_TOKEN") from None
        if header.get("alg") not in ALGORITHMS:
            raise Unauthenticated("token algorithm not accepted", reason="INVALID_TOKEN")
        key = self.keys.key(str(header.get("kid", "")))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("access token expired", reason="TOKEN_EXPIRED") from None
        except jwt.PyJWTError as error:
            raise Unauthenticated(f"invalid access token: {error}", reason="INVALID_TOKEN") from None
        principal = Principal.from_claims(claims, token)
        if self.revocations.is_revoked(principal):
            raise Unauthenticated("access token revoked", reason="TOKEN_REVOKED")
        return principal


def jwks_from_json(text: str | bytes) -> dict[str, Any]:
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("a JWKS is a JSON object")
    return document
