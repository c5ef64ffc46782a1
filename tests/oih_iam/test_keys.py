"""Signing keys shared by several IAM replicas through their database, stored sealed by IAM's
master key."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from oih_iam.keys import KeyStore
from oih_iam.models import TABLES, SigningKeyRow
from oih_runtime import crypto
from oih_runtime.clock import utcnow
from oih_runtime.db import make_engine

LIFETIME = timedelta(minutes=15)
KEYRING = crypto.Keyring(crypto.new_master_key_line())


@pytest.fixture
def keyring() -> crypto.Keyring:
    return crypto.Keyring(crypto.new_master_key_line())


def stored(engine: Engine) -> list[SigningKeyRow]:
    with Session(engine) as session:
        return list(session.exec(select(SigningKeyRow)))


def test_a_rotation_on_one_replica_reaches_the_others(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'iam.db'}", tables=TABLES)
    first = KeyStore(engine, timedelta(minutes=15), KEYRING, reload_seconds=0, announce=timedelta(0))
    second = KeyStore(engine, timedelta(minutes=15), KEYRING, reload_seconds=0, announce=timedelta(0))
    old_kid = second.signing_key()[0]
    rotated, _ = first.rotate()
    assert second.signing_key()[0] == rotated.kid
    assert {old_kid, rotated.kid} <= {key["kid"] for key in second.jwks()["keys"]}
    engine.dispose()


def test_keys_are_cached_between_reloads(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'iam.db'}", tables=TABLES)
    first = KeyStore(engine, timedelta(minutes=15), KEYRING)
    second = KeyStore(engine, timedelta(minutes=15), KEYRING, reload_seconds=3600)
    before = second.signing_key()[0]
    first.rotate()
    assert second.signing_key()[0] == before  # until its next reload
    engine.dispose()


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


def test_a_rotated_key_is_published_before_it_signs(tmp_path: Path) -> None:
    """Pre-announce: the new key is in the JWKS at once, signs only `announce` later; the old
    one signs until then and stays published."""
    engine = make_engine(f"sqlite:///{tmp_path / 'iam.db'}", tables=TABLES)
    clock = Clock()
    keys = KeyStore(engine, timedelta(minutes=15), KEYRING, reload_seconds=0,
                    announce=timedelta(seconds=60), clock=clock)
    old_kid = keys.signing_key()[0]
    rotated, start = keys.rotate()
    assert start == clock.now + timedelta(seconds=60)
    assert rotated.kid in {key["kid"] for key in keys.jwks()["keys"]}
    assert keys.signing_key()[0] == old_kid
    clock.now += timedelta(seconds=59)
    assert keys.signing_key()[0] == old_kid
    clock.now += timedelta(seconds=2)
    assert keys.signing_key()[0] == rotated.kid
    assert {old_kid, rotated.kid} <= {key["kid"] for key in keys.jwks()["keys"]}
    # A replica starting now signs with the same key.
    other = KeyStore(engine, timedelta(minutes=15), KEYRING, reload_seconds=0, clock=clock)
    assert other.signing_key()[0] == rotated.kid
    engine.dispose()


def test_rotations_in_quick_succession_each_wait_their_announcement(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'iam.db'}", tables=TABLES)
    clock = Clock()
    keys = KeyStore(engine, timedelta(minutes=15), KEYRING, reload_seconds=0,
                    announce=timedelta(seconds=60), clock=clock)
    first_kid = keys.signing_key()[0]
    second, _ = keys.rotate()
    clock.now += timedelta(seconds=10)
    third, _ = keys.rotate()
    assert keys.signing_key()[0] == first_kid
    clock.now += timedelta(seconds=51)  # 61 s after the first rotation
    assert keys.signing_key()[0] == second.kid
    clock.now += timedelta(seconds=10)  # 61 s after the second
    assert keys.signing_key()[0] == third.kid
    engine.dispose()


def test_private_keys_are_stored_sealed_and_bound_to_their_kid(tmp_path: Path,
                                                               keyring: crypto.Keyring) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'iam.db'}", tables=TABLES)
    store = KeyStore(engine, LIFETIME, keyring)
    store.rotate()
    rows = stored(engine)
    assert len(rows) == 2
    for row in rows:
        assert crypto.is_sealed(row.private_pem) and "PRIVATE KEY" not in row.private_pem
    raw = (tmp_path / "iam.db").read_bytes() + (tmp_path / "iam.db-wal").read_bytes()
    assert b"PRIVATE KEY" not in raw
    # One key's sealed PEM copied onto the other's row does not open there.
    with Session(engine) as session:
        victim = session.get(SigningKeyRow, rows[0].kid)
        assert victim is not None
        victim.private_pem = rows[1].private_pem
        session.add(victim)
        session.commit()
    with pytest.raises(crypto.DecryptionError):
        KeyStore(engine, LIFETIME, keyring)
    # Nor does anything open without the master key.
    with pytest.raises(crypto.DecryptionError):
        KeyStore(engine, LIFETIME, crypto.Keyring(crypto.new_master_key_line()))
    engine.dispose()


def test_clear_keys_of_an_older_iam_are_sealed_at_start(tmp_path: Path,
                                                        keyring: crypto.Keyring) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'iam.db'}", tables=TABLES)
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    with Session(engine) as session:
        session.add(SigningKeyRow(kid="legacy", private_pem=pem))
        session.commit()
    store = KeyStore(engine, LIFETIME, keyring)
    assert store.signing_key()[0] == "legacy"
    (row,) = stored(engine)
    assert crypto.is_sealed(row.private_pem)
    engine.dispose()


def test_master_key_rotation_keeps_the_signing_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'iam.db'}", tables=TABLES)
    key_file = tmp_path / "iam-master-key"
    old_line, new_line = crypto.new_master_key_line(), crypto.new_master_key_line()
    key_file.write_text(old_line + "\n")
    store = KeyStore(engine, LIFETIME, crypto.Keyring(path=key_file), reload_seconds=0)
    kid = store.signing_key()[0]
    # The new key first, the old one still there: a restarted replica re-wraps at start...
    key_file.write_text(f"{new_line}\n{old_line}\n")
    KeyStore(engine, LIFETIME, crypto.Keyring(path=key_file))
    assert {crypto.sealed_by(r.private_pem) for r in stored(engine)} == {new_line.split(":")[0]}
    # ...after which the old master key can go, and the signing key is the same.
    key_file.write_text(new_line + "\n")
    assert store.signing_key()[0] == kid
    assert KeyStore(engine, LIFETIME, crypto.Keyring(path=key_file)).signing_key()[0] == kid
    engine.dispose()
