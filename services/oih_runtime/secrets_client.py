"""Resolving a secret's value from the Secrets service, for platform services (the orchestrator
when it deploys a step, the webhooks service to check an HMAC signature).

The channel must carry the platform's service token (`clients.authenticated_channel`): only a
service account holding "secrets.resolve" gets a value. Never log what this returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import grpc

from oih.secrets.v1 import secrets_pb2, secrets_pb2_grpc


class SecretNotFound(LookupError):
    """The secret does not exist, or belongs to another tenant than the one asked for."""


@dataclass(frozen=True)
class Resolved:
    """A secret's value as a JSON object, and the previous value during a rotation's grace
    period (else None). `repr` hides both so a stray log line shows no value."""

    name: str
    type: int  # secrets_pb2.Secret.Type
    value: dict[str, Any] = field(repr=False)
    previous_value: dict[str, Any] | None = field(default=None, repr=False)


class SecretsClient:
    def __init__(self, channel: grpc.Channel, timeout: float = 10.0) -> None:
        self._stub = secrets_pb2_grpc.SecretServiceStub(channel)
        self._timeout = timeout

    def resolve(self, name: str, tenant: str, flow: str = "") -> Resolved:
        """The value of `name` for a flow of `tenant`. Raises SecretNotFound for a missing or
        foreign secret; other failures stay `grpc.RpcError`."""
        try:
            reply = self._stub.ResolveSecret(
                secrets_pb2.ResolveSecretRequest(name=name, tenant=tenant, flow=flow),
                timeout=self._timeout,
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise SecretNotFound(f"{name} does not exist in {tenant}") from None
            raise
        previous = json.loads(reply.previous_value) if reply.previous_value else None
        return Resolved(reply.name, reply.type, json.loads(reply.value), previous)


def resolve(channel: grpc.Channel, name: str, tenant: str, flow: str = "") -> Resolved:
    """One-off resolve over `channel` (see `SecretsClient.resolve`)."""
    return SecretsClient(channel).resolve(name, tenant, flow)
