"""Where HMAC keys come from: the Secrets service (`ResolveSecret`, permission
`secrets.resolve`, called with this service's token). The key is the secret's `key`; during a
rotation's grace period the previous value is valid too. Nothing of it is stored here.

`KeySource` is the one seam: `(secret name, tenant, flow) -> keys, current first`."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

import grpc

from oih_runtime.errors import FailedPrecondition, Unavailable

KeySource = Callable[[str, str, str], list[bytes]]


def _key_of(value: bytes, secret: str) -> bytes:
    try:
        document = json.loads(value)
    except ValueError:
        document = None
    key = document.get("key") if isinstance(document, dict) else None
    if not isinstance(key, str) or not key:
        raise FailedPrecondition(f"secret {secret} has no `key` to sign webhooks with",
                                 reason="HMAC_SECRET_UNUSABLE", subject=secret)
    return key.encode()


def secrets_service(channel: grpc.Channel, timeout: float = 5.0) -> KeySource:
    """Keys from the Secrets service over `channel` (authenticated with our token)."""
    def resolve(secret: str, tenant: str, flow: str) -> list[bytes]:
        try:
            secrets_pb2: Any = importlib.import_module("oih.secrets.v1.secrets_pb2")
            secrets_grpc: Any = importlib.import_module("oih.secrets.v1.secrets_pb2_grpc")
        except ModuleNotFoundError:
            raise Unavailable("the Secrets service is not part of this platform build",
                              reason="SECRETS_UNAVAILABLE") from None
        stub = secrets_grpc.SecretServiceStub(channel)
        try:
            resolved = stub.ResolveSecret(secrets_pb2.ResolveSecretRequest(
                name=secret, tenant=tenant, flow=flow), timeout=timeout)
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                raise FailedPrecondition(f"secret {secret} cannot be resolved for this flow",
                                         reason="HMAC_SECRET_UNUSABLE", subject=secret) from None
            raise Unavailable(f"the Secrets service did not answer: {error.code().name}",
                              reason="SECRETS_UNAVAILABLE") from None
        keys = [_key_of(resolved.value, secret)]
        if resolved.previous_value:
            keys.append(_key_of(resolved.previous_value, secret))
        return keys
    return resolve
