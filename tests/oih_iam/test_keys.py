"""Signing keys shared by several IAM replicas through their database."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from oih_iam.keys import KeyStore
from oih_iam.models import TABLES
from oih_runtime.clock import utcnow
from oih_runtime.db import make_engine


def test_a_rotation_on_one_replica_reaches_the_others(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'iam.db'}", tables=TABLES)
    first = KeyStore(engine, timedelta(minutes=15), reload_seconds=0, announce=timedelta(0))
    second = KeyStore(engine, timedelta(minutes=15), reload_seconds=0, announce=timedelta(0))
    old_kid = second.signing_key()[0]
    rotated, _ = first.rotate()
    assert second.signing_key()[0] == rotated.kid
    assert {old_kid, rotated.kid} <= {key["kid"] for key in second.jwks()["keys"]}
    engine.dispose()


def test_keys_are_cached_between_reloads(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'iam.db'}", tables=TABLES)
    first = KeyStore(engine, timedelta(minutes=15))
    second = KeyStore(engine, timedelta(minutes=15), reload_seconds=3600)
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
    keys = KeyStore(engine, timedelta(minutes=15), reload_seconds=0,
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
    other = KeyStore(engine, timedelta(minutes=15), reload_seconds=0, clock=clock)
    assert other.signing_key()[0] == rotated.kid
    engine.dispose()


def test_rotations_in_quick_succession_each_wait_their_announcement(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'iam.db'}", tables=TABLES)
    clock = Clock()
    keys = KeyStore(engine, timedelta(minutes=15), reload_seconds=0,
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
