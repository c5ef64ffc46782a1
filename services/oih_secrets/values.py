"""What a secret's value must look like for its type, and its stored form (canonical JSON)."""

from __future__ import annotations

import json
from typing import Any

from oih.secrets.v1 import secrets_pb2 as pb

MAX_VALUE_BYTES = 64 * 1024

#: The keys each typed value has (all non-empty strings, nothing else); TYPE_JSON: any object.
KEYS: dict[int, tuple[str, ...]] = {
    pb.Secret.TYPE_API_KEY: ("api_key",),
    pb.Secret.TYPE_BASIC_AUTH: ("username", "password"),
    pb.Secret.TYPE_BEARER_TOKEN: ("token",),
    pb.Secret.TYPE_HMAC_KEY: ("key",),
}


def problems(secret_type: int, value: dict[str, Any]) -> list[str]:
    """Why `value` does not fit `secret_type` (empty when it does). Never quotes the value."""
    if secret_type == pb.Secret.TYPE_JSON:
        return [] if value else ["must be a non-empty JSON object"]
    keys = KEYS.get(secret_type)
    if keys is None:
        return ["the secret's type must be set first"]
    found: list[str] = []
    for key in keys:
        if not isinstance(value.get(key), str) or not value[key]:
            found.append(f'needs "{key}" as a non-empty string')
    extra = sorted(set(value) - set(keys))
    if extra:
        found.append(f"has keys this type does not use: {', '.join(extra)} "
                     f"(expected {', '.join(keys)})")
    return found


def encode(value: dict[str, Any]) -> bytes:
    """The stored plaintext: compact JSON with sorted keys, UTF-8."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False).encode()
