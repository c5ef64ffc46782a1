"""Envelope encryption at rest: AES-256-GCM under a per-record data key, the data key wrapped by
a master key. Written once for every service that stores something secret (the Secrets
service's values, IAM's signing keys).

A sealed record is one ASCII string, `v1.<master key id>.<wrapped data key>.<ciphertext>`
(base64url parts; each encrypted part is a 12-byte nonce followed by the GCM output). The
caller's `context` (for example a secret's name and tenant) is the associated data of both
encryptions: a sealed value copied to another record does not open there.

Master keys form a keyring: the first key seals, every key opens. Rotating the master key is
"put a new key first, re-wrap every record (`rewrap`), drop the old key": the values themselves
are never re-encrypted, and the service answers throughout. The keyring comes from
`OIH_<SERVICE>_MASTER_KEY_FILE` (a file only the service can read) or `OIH_<SERVICE>_MASTER_KEY`;
one key per line (or comma-separated), each `<id>:<base64 of 32 random bytes>`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12


class MasterKeyError(RuntimeError):
    """No usable master key: the service cannot start (the message says what to set)."""


class DecryptionError(RuntimeError):
    """A sealed record does not open: wrong master key, wrong context, or tampered with."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_master_key_line() -> str:
    """A fresh master key in keyring syntax, `<id>:<base64 key>`."""
    return f"{secrets.token_hex(4)}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"


def parse_keyring(text: str) -> list[tuple[str, bytes]]:
    """`id:base64` entries, one per line or comma-separated; blank lines and `#` comments skip."""
    keys: list[tuple[str, bytes]] = []
    for raw in text.replace(",", "\n").splitlines():
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        key_id, sep, encoded = entry.partition(":")
        if not sep or not key_id.isalnum():
            raise MasterKeyError("a master key entry must look like <id>:<base64 of 32 bytes>")
        try:
            key = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise MasterKeyError(f"master key {key_id!r} is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise MasterKeyError(f"master key {key_id!r} must be 32 bytes (AES-256)")
        keys.append((key_id, key))
    if not keys:
        raise MasterKeyError("the master keyring is empty")
    return keys


class Keyring:
    """The master keys of one service. File-backed keyrings re-read the file when it changes, so
    a new key put first in the file seals new records without a restart."""

    def __init__(self, text: str = "", path: Path | None = None) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._keys = parse_keyring(text) if path is None else self._read()

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> Keyring:
        env = os.environ if env is None else env
        prefix = f"OIH_{service.upper()}_MASTER_KEY"
        if env.get(prefix + "_FILE"):
            return cls(path=Path(env[prefix + "_FILE"]))
        if env.get(prefix):
            return cls(env[prefix])
        raise MasterKeyError(
            f"{service} needs a master key: set {prefix}_FILE to a file (mode 0600) holding a"
            f" line `<id>:<base64 of 32 random bytes>` (`oih up` creates one), or {prefix}"
        )

    def _read(self) -> list[tuple[str, bytes]]:
        assert self._path is not None
        try:
            stat = self._path.stat()
            keys = parse_keyring(self._path.read_text())
        except OSError as error:
            raise MasterKeyError(f"cannot read the master key file {self._path}: {error}") from None
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        return keys

    def _current(self) -> list[tuple[str, bytes]]:
        if self._path is not None:
            with self._lock:
                try:
                    stat = self._path.stat()
                    if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                        self._keys = self._read()
                except (OSError, MasterKeyError) as error:
                    # A file being replaced, or a half-written one: keep the keys we have (the
                    # service goes on answering) and try again at the next use.
                    log.error("cannot reload the master key file; keeping the loaded keys",
                              extra={"path": str(self._path), "error": str(error)})
        return self._keys

    @property
    def active_id(self) -> str:
        return self._current()[0][0]

    def active(self) -> tuple[str, bytes]:
        return self._current()[0]

    def get(self, key_id: str) -> bytes:
        for candidate, key in self._current():
            if candidate == key_id:
                return key
        raise DecryptionError(f"master key {key_id!r} is not in the keyring")


@dataclass(frozen=True)
class _Parts:
    key_id: str
    wrapped_key: bytes
    ciphertext: bytes

    @classmethod
    def parse(cls, sealed: str) -> _Parts:
        pieces = sealed.split(".")
        if len(pieces) != 4 or pieces[0] != VERSION:
            raise DecryptionError("not a sealed record")
        try:
            return cls(pieces[1], _unb64(pieces[2]), _unb64(pieces[3]))
        except ValueError:
            raise DecryptionError("not a sealed record") from None

    def format(self) -> str:
        return ".".join((VERSION, self.key_id, _b64(self.wrapped_key), _b64(self.ciphertext)))


def _encrypt(key: bytes, plaintext: bytes, context: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def _decrypt(key: bytes, blob: bytes, context: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], context)
    except (InvalidTag, ValueError):
        raise DecryptionError("the record does not open with this key and context") from None


def seal(keyring: Keyring, plaintext: bytes, context: bytes) -> str:
    """Encrypt `plaintext` under a new data key wrapped by the active master key."""
    key_id, master = keyring.active()
    data_key = AESGCM.generate_key(bit_length=256)
    return _Parts(
        key_id,
        _encrypt(master, data_key, b"data-key|" + context),
        _encrypt(data_key, plaintext, b"value|" + context),
    ).format()


def _data_key(keyring: Keyring, parts: _Parts, context: bytes) -> bytes:
    return _decrypt(keyring.get(parts.key_id), parts.wrapped_key, b"data-key|" + context)


def unseal(keyring: Keyring, sealed: str, context: bytes) -> bytes:
    """The plaintext of a sealed record; DecryptionError when it does not open."""
    parts = _Parts.parse(sealed)
    return _decrypt(_data_key(keyring, parts, context), parts.ciphertext, b"value|" + context)


def fingerprint(keyring: Keyring, sealed: str, context: bytes) -> str:
    """12 hex digits of an HMAC of the plaintext under its own data key: tells versions apart
    and, without the master key, gives nothing to guess a weak value against."""
    parts = _Parts.parse(sealed)
    data_key = _data_key(keyring, parts, context)
    plaintext = _decrypt(data_key, parts.ciphertext, b"value|" + context)
    return hmac.new(data_key, b"fingerprint|" + plaintext, hashlib.sha256).hexdigest()[:12]


def sealed_by(sealed: str) -> str:
    """The id of the master key that wraps a sealed record's data key."""
    return _Parts.parse(sealed).key_id


def rewrap(keyring: Keyring, sealed: str, context: bytes) -> str:
    """The same record with its data key wrapped by the active master key (unchanged when it
    already is). The ciphertext of the value is kept as it is."""
    parts = _Parts.parse(sealed)
    key_id, master = keyring.active()
    if parts.key_id == key_id:
        return sealed
    data_key = _data_key(keyring, parts, context)
    return _Parts(key_id, _encrypt(master, data_key, b"data-key|" + context),
                  parts.ciphertext).format()


def is_sealed(text: str) -> bool:
    return text.startswith(VERSION + ".")
