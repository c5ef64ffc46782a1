"""Signing keys: RS256, identified by `kid`, rotatable.

RS256 rather than ES256 because tokens are verified far more often than they are signed (at
Envoy and in every service), and RSA verification is the cheaper of the two. The newest key
signs; retired keys stay in the JWKS until every token they signed has expired.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih_iam.models import SigningKeyRow
from oih_runtime.clock import utcnow
from oih_runtime.db import transaction


def _new_key() -> SigningKeyRow:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return SigningKeyRow(kid=uuid.uuid4().hex[:16], private_pem=pem)


class KeyStore:
    """The signing keys of this IAM, cached in memory and persisted in its database."""

    def __init__(self, engine: Engine, token_lifetime: timedelta,
                 reload_seconds: float = 30.0) -> None:
        self._engine = engine
        self._token_lifetime = token_lifetime
        # Several IAM replicas share the database: each re-reads the keys this often, so a
        # rotation made by one is signed with and published by all of them soon after.
        self._reload_seconds = reload_seconds
        self._loaded_at = 0.0
        self._reloading = threading.Lock()
        self._lock = threading.Lock()
        self._current: tuple[str, Any] | None = None
        self._jwks: dict[str, Any] = {}
        with transaction(engine) as session:
            if self._active(session) is None:
                session.add(_new_key())
        self._load()

    @staticmethod
    def _active(session: Session) -> SigningKeyRow | None:
        query = select(SigningKeyRow).where(col(SigningKeyRow.retire_time).is_(None))
        return session.exec(query.order_by(col(SigningKeyRow.create_time).desc())).first()

    def _load(self) -> None:
        # Keys retired longer ago than a token lives (plus margin) can no longer verify anything.
        horizon = utcnow() - self._token_lifetime - timedelta(minutes=5)
        with Session(self._engine) as session:
            rows = session.exec(select(SigningKeyRow)).all()
            active = self._active(session)
        assert active is not None
        published = []
        for row in rows:
            retired = row.retire_time
            if retired is not None and retired.replace(tzinfo=horizon.tzinfo) < horizon:
                continue
            private = serialization.load_pem_private_key(row.private_pem.encode(), None)
            assert isinstance(private, rsa.RSAPrivateKey)
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
            published.append({**jwk, "kid": row.kid, "use": "sig", "alg": "RS256"})
        active_key = serialization.load_pem_private_key(active.private_pem.encode(), None)
        with self._lock:
            self._current = (active.kid, active_key)
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
        self._fresh()
        with self._lock:
            assert self._current is not None
            return self._current

    def jwks(self) -> dict[str, Any]:
        self._fresh()
        with self._lock:
            return self._jwks

    def rotate(self) -> SigningKeyRow:
        with transaction(self._engine) as session:
            for row in session.exec(
                select(SigningKeyRow).where(col(SigningKeyRow.retire_time).is_(None))
            ):
                row.retire_time = utcnow()
                session.add(row)
            fresh = _new_key()
            session.add(fresh)
        self._load()
        return fresh
