"""The verifier's cache of verified tokens: a hit is only as good as a fresh verification
(key still published, not expired, not revoked)."""

from __future__ import annotations

import time

import pytest

from oih_runtime.errors import Unauthenticated
from tests.support.tokens import TestIssuer


def test_a_cached_token_is_refused_once_revoked() -> None:
    issuer = TestIssuer()
    token = issuer.token()
    first = issuer.verifier.verify(token)
    assert issuer.verifier.verify(token) is first  # the cache answered
    issuer.verifier.revocations.revoke_token(first.token_id, time.time() + 600)
    with pytest.raises(Unauthenticated):
        issuer.verifier.verify(token)


def test_a_cached_token_is_refused_once_its_key_is_withdrawn() -> None:
    issuer = TestIssuer()
    token = issuer.token()
    issuer.verifier.verify(token)
    issuer.jwks = {"keys": []}  # the key left the JWKS (a compromised key removed)
    issuer.verifier.keys._fetched_at = 0.0  # let the key cache refetch now
    with pytest.raises(Unauthenticated):
        issuer.verifier.verify(token)


def test_a_cached_token_is_refused_once_expired() -> None:
    issuer = TestIssuer()
    now = int(time.time())
    token = issuer.token(iat=now - 100, exp=now + 1)
    issuer.verifier.leeway = 0
    issuer.verifier.verify(token)
    time.sleep(1.1)
    with pytest.raises(Unauthenticated):
        issuer.verifier.verify(token)
