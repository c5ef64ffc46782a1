"""Resolving the secrets a flow's steps name (`Node.credentials`) when the orchestrator deploys
them, with the platform's service token (`oih_runtime.secrets_client`). The values go from
here to the driver in memory only: never into the deployment row, a spec file, a log line or
an event (see `oih_worker.credentials` for how a worker receives them)."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection

import grpc

from oih.flows.v1 import flows_pb2
from oih_runtime.secrets_client import Resolved, SecretNotFound

#: (secret name, tenant, flow name) → the value; `SecretsClient.resolve`.
Resolve = Callable[[str, str, str], Resolved]


class CredentialsFailed(Exception):
    """A step's credentials cannot be resolved (the message names the step and the secret)."""


def step_credentials(flow: flows_pb2.Flow, resolve: Resolve,
                     steps: Collection[str] | None = None) -> dict[str, bytes]:
    """Step id → its resolved credentials as a UTF-8 JSON object, for the steps (of `steps`,
    default all) that name a secret."""
    found: dict[str, bytes] = {}
    for node in flow.graph.nodes:
        if not node.credentials or (steps is not None and node.id not in steps):
            continue
        try:
            resolved = resolve(node.credentials, flow.tenant, flow.name)
        except SecretNotFound:
            raise CredentialsFailed(f"step {node.id}: its credentials {node.credentials} do "
                                    "not exist in the flow's tenant") from None
        except grpc.RpcError as error:
            raise CredentialsFailed(f"step {node.id}: the Secrets service could not resolve "
                                    f"{node.credentials} ({error.code().name})") from None
        found[node.id] = json.dumps(resolved.value).encode()
    return found
