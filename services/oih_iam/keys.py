"""Signing keys: RS256, identified by `kid`, rotatable.

RS256 rather than ES256 because tokens are verified far more often than they are signed (at
Envoy and in every service), and RSA verification is the cheaper of the two.

Rotation pre-announces: a new key is published in the JWKS at once but signs only
`announce` later (`OIH_IAM_KEY_ANNOUNCE_SECONDS`), when every verifier has fetched it — Envoy
refetches the JWKS every 10 s, other IAM replicas reload keys every 30 s. Signing with a key
nobody has fetched yet would make every new token fail at the gateway until its next fetch.
A key's `retire_time` is when it stops signing (set by the rotation to the new key's start, so
possibly in the future); the oldest key not yet retired signs. Retired keys stay in the JWKS
until every token they signed has expired.

Private keys are stored sealed (`oih_runtime.crypto`, AES-256-GCM under a data key wrapped by
IAM's master key, `OIH_IAM_MASTER_KEY_FILE`), bound to their `kid`. Rows an older IAM wrote in
clear are sealed when IAM starts, and every key is re-wrapped under the newest master key then.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih_iam.models import SigningKeyRow
from oih_runtime import crypto
from oih_runtime.clock import aware, utcnow
from oih_runtime.db import transaction


def _context(kid: str) -> bytes:
    return f"iam_signing_key|{kid}".encode()


def _new_key(keyring: crypto.Keyring) -> SigningKeyRow:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    kid = uuid.uuid4().hex[:16]
    return SigningKeyRow(kid=kid, private_pem=crypto.seal(keyring, pem, _context(kid)))


def private_key(keyring: crypto.Keyring, row: SigningKeyRow) -> rsa.RSAPrivateKey:
    """The private key of a stored row (opened with the master keyring)."""
    pem = crypto.unseal(keyring, row.private_pem, _context(row.kid))
    private = serialization.load_pem_private_key(pem, None)
    assert isinstance(private, rsa.RSAPrivateKey)
    return private


class KeyStore:
    """The signing keys of this IAM, cached in memory and persisted in its database."""

    def __init__(self, engine: Engine, token_lifetime: timedelta, keyring: crypto.Keyring,
                 reload_seconds: float = 30.0, announce: timedelta = timedelta(seconds=60),
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._engine = engine
        self._keyring = keyring
        self._token_lifetime = token_lifetime
        # Several IAM replicas share the database: each re-reads the keys this often, so a
        # rotation made by one is signed with and published by all of them soon after.
        self._reload_seconds = reload_seconds
        self._announce = announce
        self._clock = clock
        self._loaded_at = 0.0
        self._reloading = threading.Lock()
        self._lock = threading.Lock()
        #: (kid, private key, retire time or None), oldest first.
        self._keys: list[tuple[str, Any, datetime | None]] = []
        self._jwks: dict[str, Any] = {}
        with transaction(engine, lock=True) as session:
            for row in session.exec(select(SigningKeyRow)):
                if not crypto.is_sealed(row.private_pem):  # written in clear by an older IAM
                    row.private_pem = crypto.seal(keyring, row.private_pem.encode(),
                                                  _context(row.kid))
                    session.add(row)
            if not self._unretired(session):
                session.add(_new_key(keyring))
        # A new master key put first in the file takes over the old keys' wrapping at start
        # (replicas restarted one by one: no downtime; the old master key opens until then).
        self.rewrap()
        self._load()

    def _unretired(self, session: Session) -> list[SigningKeyRow]:
        """Keys that sign now or will: oldest first."""
        now = self._clock()
        rows = session.exec(select(SigningKeyRow).order_by(col(SigningKeyRow.create_time)))
        return [row for row in rows
                if row.retire_time is None or aware(row.retire_time) > now]

    def _load(self) -> None:
        # Keys retired longer ago than a token lives (plus margin) can no longer verify anything.
        horizon = self._clock() - self._token_lifetime - timedelta(minutes=5)
        with Session(self._engine) as session:
            rows = session.exec(select(SigningKeyRow)
                                .order_by(col(SigningKeyRow.create_time))).all()
        published, keys = [], []
        for row in rows:
            retired = aware(row.retire_time) if row.retire_time is not None else None
            if retired is not None and retired < horizon:
                continue
            private = private_key(self._keyring, row)
            assert isinstance(private, rsa.RSAPrivateKey)
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
            published.append({**jwk, "kid": row.kid, "use": "sig", "alg": "RS256"})
            keys.append((row.kid, private, retired))
        with self._lock:
            self._keys = keys
            self._jwks = {"keys": published}
            self._loaded_at = time.monotonic()

    def _fresh(self) -> None:
        if time.monotonic() - self._loaded_at < self._reload_seconds:
            return
        if self._reloading.acquire(blocking=False):  # one thread reloads, the others go on
            try:
                self._load()
            finally:
                self._reloading.release()

    def signing_key(self) -> tuple[str, Any]:
        """The key that signs now: the oldest one not yet retired."""
        self._fresh()
        now = self._clock()
        with self._lock:
            for kid, key, retired in self._keys:
                if retired is None or retired > now:
                    return kid, key
            # Every loaded key retired (a rotation's successor not loaded yet): the newest.
            kid, key, _ = self._keys[-1]
            return kid, key

    def jwks(self) -> dict[str, Any]:
        self._fresh()
        with self._lock:
            return self._jwks

    def rotate(self) -> tuple[SigningKeyRow, datetime]:
        """Publish a new key now; it signs from the returned time on (`announce` later)."""
        start = self._clock() + self._announce
        with transaction(self._engine) as session:
            for row in self._unretired(session):
                # The current key signs until the new one starts (an earlier rotation's
                # pending key keeps its own, earlier, turn).
                if row.retire_time is None or aware(row.retire_time) > start:
                    row.retire_time = start
                    session.add(row)
            fresh = _new_key(self._keyring)
            session.add(fresh)
        self._load()
        return fresh, start

    def rewrap(self) -> int:
        """Re-wrap every signing key's data key under the newest master key (after a new key
        was put first in the master key file); returns how many were re-wrapped."""
        done = 0
        with transaction(self._engine, lock=True) as session:
            for row in session.exec(select(SigningKeyRow)):
                rewrapped = crypto.rewrap(self._keyring, row.private_pem, _context(row.kid))
                if rewrapped != row.private_pem:
                    row.private_pem = rewrapped
                    session.add(row)
                    done += 1
        return done
