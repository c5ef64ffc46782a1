"""Where HMAC keys come from: the Secrets service (`ResolveSecret`, permission
`secrets.resolve`, called with this service's token through `oih_runtime.secrets_client`). The
key is the secret's `key`; during a rotation's grace period the previous value is valid too.
Nothing of it is stored here, nor logged.

`KeySource` is the one seam: `(secret name, tenant, flow) -> keys, current first`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from oih_runtime.errors import FailedPrecondition, Unavailable
from oih_runtime.secrets_client import SecretNotFound, SecretsClient

KeySource = Callable[[str, str, str], list[bytes]]


def _key_of(value: dict[str, Any] | None, secret: str) -> bytes:
    key = value.get("key") if isinstance(value, dict) else None
    if not isinstance(key, str) or not key:
        raise FailedPrecondition(f"secret {secret} has no `key` to sign webhooks with",
                                 reason="HMAC_SECRET_UNUSABLE", subject=secret)
    return key.encode()


def secrets_service(channel: grpc.Channel, timeout: float = 5.0) -> KeySource:
    """Keys from the Secrets service over `channel` (authenticated with our token)."""
    client = SecretsClient(channel, timeout=timeout)

    def resolve(secret: str, tenant: str, flow: str) -> list[bytes]:
        try:
            resolved = client.resolve(secret, tenant, flow)
        except SecretNotFound:
            # Deleted since the flow was saved (or never of this tenant): nobody can sign.
            raise FailedPrecondition(f"secret {secret} cannot be resolved for this flow",
                                     reason="HMAC_SECRET_UNUSABLE", subject=secret) from None
        except grpc.RpcError as error:
            raise Unavailable(f"the Secrets service did not answer: {error.code().name}",
                              reason="SECRETS_UNAVAILABLE") from None
        keys = [_key_of(resolved.value, secret)]
        if resolved.previous_value is not None:
            keys.append(_key_of(resolved.previous_value, secret))
        return keys
    return resolve
