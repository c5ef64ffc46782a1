"""Envelope encryption: a sealed record opens only with its context and a master key of the
keyring, and re-wrapping keeps the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from oih_runtime import crypto


def test_seal_opens_only_with_its_context() -> None:
    keyring = crypto.Keyring(crypto.new_master_key_line())
    sealed = crypto.seal(keyring, b"hunter2", b"secrets/a|tenants/t")
    assert b"hunter2" not in sealed.encode()
    assert crypto.unseal(keyring, sealed, b"secrets/a|tenants/t") == b"hunter2"
    for context in (b"secrets/b|tenants/t", b"secrets/a|tenants/u", b""):
        with pytest.raises(crypto.DecryptionError):
            crypto.unseal(keyring, sealed, context)
    # Two seals of one value differ (fresh data key and nonces), and so do their fingerprints.
    again = crypto.seal(keyring, b"hunter2", b"secrets/a|tenants/t")
    assert again != sealed
    assert crypto.fingerprint(keyring, again, b"secrets/a|tenants/t") != crypto.fingerprint(
        keyring, sealed, b"secrets/a|tenants/t")


def test_tampered_or_foreign_records_do_not_open() -> None:
    keyring = crypto.Keyring(crypto.new_master_key_line())
    sealed = crypto.seal(keyring, b"value", b"c")
    version, key_id, wrapped, ciphertext = sealed.split(".")
    flipped = ciphertext[:-2] + ("A" if ciphertext[-2] != "A" else "B") + ciphertext[-1]
    for broken in (f"{version}.{key_id}.{wrapped}.{flipped}", f"{version}.other.{wrapped}.x",
                   "v1.only.three", "plain text", f"{version}.{key_id}.{wrapped}.!!!"):
        with pytest.raises(crypto.DecryptionError):
            crypto.unseal(keyring, broken, b"c")
    with pytest.raises(crypto.DecryptionError):
        crypto.unseal(crypto.Keyring(crypto.new_master_key_line()), sealed, b"c")


def test_rewrap_moves_to_the_first_key_and_keeps_the_value() -> None:
    old, new = crypto.new_master_key_line(), crypto.new_master_key_line()
    sealed = crypto.seal(crypto.Keyring(old), b"value", b"c")
    both = crypto.Keyring(f"{new},{old}")
    rewrapped = crypto.rewrap(both, sealed, b"c")
    assert crypto.sealed_by(rewrapped) == new.split(":")[0]
    assert rewrapped.split(".")[3] == sealed.split(".")[3]  # the value is not re-encrypted
    assert crypto.rewrap(both, rewrapped, b"c") == rewrapped
    assert crypto.unseal(crypto.Keyring(new), rewrapped, b"c") == b"value"


@pytest.mark.parametrize("text", ["", "# only a comment", "nokey", "id:not-base64!",
                                  "id:c2hvcnQ=", "bad id:" + "A" * 44])
def test_bad_keyrings_are_refused(text: str) -> None:
    with pytest.raises(crypto.MasterKeyError):
        crypto.Keyring(text)


def test_keyring_from_env_file_or_value(tmp_path: Path) -> None:
    line = crypto.new_master_key_line()
    path = tmp_path / "key"
    path.write_text(line + "\n")
    assert crypto.Keyring.from_env("secrets", {"OIH_SECRETS_MASTER_KEY_FILE": str(path)}
                                   ).active_id == line.split(":")[0]
    assert crypto.Keyring.from_env("iam", {"OIH_IAM_MASTER_KEY": line}).active_id == line.split(
        ":")[0]
    with pytest.raises(crypto.MasterKeyError, match="OIH_SECRETS_MASTER_KEY_FILE"):
        crypto.Keyring.from_env("secrets", {})
    with pytest.raises(crypto.MasterKeyError, match="cannot read"):
        crypto.Keyring.from_env("secrets", {"OIH_SECRETS_MASTER_KEY_FILE": str(tmp_path / "x")})


def test_a_broken_or_missing_key_file_keeps_the_loaded_keys(tmp_path: Path) -> None:
    line = crypto.new_master_key_line()
    path = tmp_path / "key"
    path.write_text(line + "\n")
    keyring = crypto.Keyring(path=path)
    sealed = crypto.seal(keyring, b"value", b"c")
    path.write_text("half-writ")  # a bad file: the service goes on with what it had
    assert crypto.unseal(keyring, sealed, b"c") == b"value"
    path.unlink()
    assert crypto.unseal(keyring, sealed, b"c") == b"value"
    newer = crypto.new_master_key_line()
    path.write_text(f"{newer}\n{line}\n")  # fixed: the new key is taken up without a restart
    assert keyring.active_id == newer.split(":")[0]
