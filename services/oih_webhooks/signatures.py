"""Checking webhook signatures (no I/O): an HMAC of the raw body in one header, and the
Standard Webhooks scheme (https://www.standardwebhooks.com/). Every comparison is constant-time
(`hmac.compare_digest`); several keys may be valid at once (a rotated secret's previous value
during its grace period)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

ALGORITHMS = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


class BadSignature(Exception):
    """The request is not signed with a current key; the message says why (for the caller)."""


def sign(key: bytes, body: bytes, algorithm: str = "sha256", encoding: str = "hex") -> str:
    digest = hmac.new(key, body, ALGORITHMS[algorithm]).digest()
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()


def _decode(signature: str, encoding: str) -> bytes:
    text = signature.strip()
    if encoding == "hex":
        # Tolerate the common "sha256=<hex>" form (GitHub, many others).
        text = text.split("=", 1)[1] if "=" in text and not text.endswith("=") else text
        return bytes.fromhex(text)
    return base64.b64decode(text, validate=True)


def check_hmac(keys: Sequence[bytes], body: bytes, signature: str, *, algorithm: str = "sha256",
               encoding: str = "hex") -> None:
    if not signature:
        raise BadSignature("the signature header is missing")
    try:
        given = _decode(signature, encoding)
    except (ValueError, binascii.Error):
        raise BadSignature(f"the signature is not {encoding}") from None
    matched = False
    for key in keys:  # no early exit: the time taken does not tell which key matched
        expected = hmac.new(key, body, ALGORITHMS[algorithm]).digest()
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise BadSignature("the signature does not match the body")


def standard_key(secret: bytes) -> bytes:
    """A Standard Webhooks secret is `whsec_<base64>`; any other value is the key itself."""
    if secret.startswith(b"whsec_"):
        try:
            return base64.b64decode(secret[len(b"whsec_"):], validate=True)
        except binascii.Error:
            return secret
    return secret


def standard_sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(standard_key(key), signed,
                                             hashlib.sha256).digest()).decode()


def check_standard(keys: Sequence[bytes], body: bytes, *, message_id: str, timestamp: str,
                   signatures: str, now: float, tolerance: float) -> None:
    if not (message_id and timestamp and signatures):
        raise BadSignature("webhook-id, webhook-timestamp and webhook-signature are required")
    try:
        sent = int(timestamp)
    except ValueError:
        raise BadSignature("webhook-timestamp is not a number of seconds") from None
    if abs(now - sent) > tolerance:
        # A captured request replayed later (or a wrong clock): refused before any HMAC.
        raise BadSignature("webhook-timestamp is outside the tolerance")
    given: list[bytes] = []
    for part in signatures.split():
        version, _, value = part.partition(",")
        if version != "v1":
            continue
        try:
            given.append(base64.b64decode(value, validate=True))
        except binascii.Error:
            continue
    signed = f"{message_id}.{timestamp}.".encode() + body
    matched = False
    for key in keys:
        expected = hmac.new(standard_key(key), signed, hashlib.sha256).digest()
        for candidate in given:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise BadSignature("no webhook-signature matches")
