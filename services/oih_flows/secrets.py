"""Asking the Secrets service whether a secret a flow names exists, as the user who called us.

The call carries the flow service's own token and the caller's in `x-oih-on-behalf-of`, so the
Secrets service judges visibility for the user (another tenant's secret answers NOT_FOUND).
It only ever reads metadata: the Secrets service returns no values to GetSecret.
"""

from __future__ import annotations

import grpc

from oih.secrets.v1 import secrets_pb2, secrets_pb2_grpc
from oih_runtime import principal
from oih_runtime.clients import on_behalf_of
from oih_runtime.errors import DomainError, PermissionDenied


class SecretsUnavailable(DomainError):
    """The Secrets service did not answer: the flow cannot be checked, so it is not saved."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "SECRETS_UNAVAILABLE"


class SecretDirectory:
    def __init__(self, channel: grpc.Channel, timeout: float = 10.0) -> None:
        self._stub = secrets_pb2_grpc.SecretServiceStub(channel)
        self._timeout = timeout

    def __call__(self, name: str) -> secrets_pb2.Secret | None:
        """The secret's metadata as the current caller sees it, or None when it is not
        visible."""
        caller = principal.current()
        try:
            return self._stub.GetSecret(secrets_pb2.GetSecretRequest(name=name),
                                        metadata=on_behalf_of(caller.token),
                                        timeout=self._timeout)
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return None
            if code == grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(f"cannot check {name}: {error.details()}",
                                       reason="SECRETS_NOT_READABLE") from None
            raise SecretsUnavailable(f"the Secrets service could not be asked about {name} "
                                     f"({code.name}); try again") from None
