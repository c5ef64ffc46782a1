"""Password and client-secret hashing.

Passwords are argon2id (memory-hard: guessing a leaked hash costs memory, not only time).
Client secrets are 256-bit random values the platform generates, so a single SHA-256 is as
strong as any slow hash for them and keeps token exchange cheap for machine clients.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from oih_iam.settings import IamSettings


class Passwords:
    def __init__(self, settings: IamSettings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_kib
        )
        # Verified against when the username is unknown, so both cases take as long.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash or self._decoy, password) and bool(stored_hash)
        except (VerificationError, InvalidHashError):
            return False


def new_client_secret() -> str:
    return "oihs_" + secrets.token_urlsafe(32)


def hash_client_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def client_secret_matches(stored_hash: str, secret: str) -> bool:
    return hmac.compare_digest(stored_hash, hash_client_secret(secret))
