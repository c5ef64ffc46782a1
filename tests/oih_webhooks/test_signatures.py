"""Webhook signature checks (pure functions): every accepted form, and what is refused."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from oih_webhooks import signatures
from oih_webhooks.signatures import BadSignature

BODY = b'{"id": 12345678901234567890}'
KEY, OLD = b"current", b"previous"


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_hmac_of_the_raw_body_in_each_form(algorithm: str, encoding: str) -> None:
    digest = hmac.new(KEY, BODY, getattr(hashlib, algorithm)).digest()
    given = digest.hex() if encoding == "hex" else base64.b64encode(digest).decode()
    signatures.check_hmac([KEY], BODY, given, algorithm=algorithm, encoding=encoding)
    # A rotated secret's previous value is still good during its grace period.
    signatures.check_hmac([OLD, KEY], BODY, given, algorithm=algorithm, encoding=encoding)


def test_the_github_style_prefix_is_understood() -> None:
    signatures.check_hmac([KEY], BODY, "sha256=" + signatures.sign(KEY, BODY))


@pytest.mark.parametrize("given", [
    "", "zz", signatures.sign(b"other", BODY), signatures.sign(KEY, BODY + b" "),
    signatures.sign(KEY, BODY, "sha512"),  # right key, wrong algorithm
])
def test_hmac_refusals(given: str) -> None:
    with pytest.raises(BadSignature):
        signatures.check_hmac([KEY], BODY, given)


def test_standard_webhooks_sign_id_timestamp_and_body() -> None:
    secret = b"whsec_" + base64.b64encode(b"the real key")
    header = signatures.standard_sign(secret, "msg_1", 1000, BODY)
    assert header.startswith("v1,")
    signatures.check_standard([secret], BODY, message_id="msg_1", timestamp="1000",
                              signatures=f"v1,bm90IGl0 {header}", now=1010, tolerance=60)
    # The spec's reference computation: base64(HMAC-SHA256(key, "{id}.{ts}.{body}")).
    expected = base64.b64encode(hmac.new(b"the real key", b"msg_1.1000." + BODY,
                                         hashlib.sha256).digest()).decode()
    assert header == f"v1,{expected}"


@pytest.mark.parametrize(("message_id", "timestamp", "now"), [
    ("msg_2", "1000", 1010),   # another id than signed
    ("msg_1", "1001", 1010),   # another timestamp than signed
    ("msg_1", "1000", 4000),   # replayed an hour later: outside the tolerance
    ("msg_1", "1000", -2000),  # from the future
    ("msg_1", "soon", 1010),
])
def test_standard_webhooks_refusals(message_id: str, timestamp: str, now: float) -> None:
    header = signatures.standard_sign(KEY, "msg_1", 1000, BODY)
    with pytest.raises(BadSignature):
        signatures.check_standard([KEY], BODY, message_id=message_id, timestamp=timestamp,
                                  signatures=header, now=now, tolerance=300)
