"""Signing keys shared by several IAM replicas through their database."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from oih_iam.keys import KeyStore
from oih_iam.models import TABLES
from oih_runtime.db import make_engine


def test_a_rotation_on_one_replica_reaches_the_others(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'iam.db'}", tables=TABLES)
    first = KeyStore(engine, timedelta(minutes=15), reload_seconds=0)
    second = KeyStore(engine, timedelta(minutes=15), reload_seconds=0)
    old_kid = second.signing_key()[0]
    rotated = first.rotate()
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
