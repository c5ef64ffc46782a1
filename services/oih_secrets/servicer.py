"""The SecretService servicer: converts protos to calls of `logic.Secrets` and back.

The RPC's permission, the token and REQUIRED fields are checked by the shared interceptors;
tenant rules and who may resolve are the logic's.
"""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from oih.secrets.v1 import secrets_pb2 as pb
from oih.secrets.v1 import secrets_pb2_grpc
from oih_runtime import principal
from oih_secrets import convert
from oih_secrets.logic import Secrets

Context = grpc.ServicerContext


class SecretServicer(secrets_pb2_grpc.SecretServiceServicer):
    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets

    def CreateSecret(self, request: pb.CreateSecretRequest, context: Context) -> pb.Secret:
        return convert.secret(self.secrets.create(principal.current(), request.secret))

    def GetSecret(self, request: pb.GetSecretRequest, context: Context) -> pb.Secret:
        return convert.secret(self.secrets.get(principal.current(), request.name))

    def ListSecrets(self, request: pb.ListSecretsRequest,
                    context: Context) -> pb.ListSecretsResponse:
        rows, token = self.secrets.list(principal.current(), request.page_size,
                                        request.page_token, request.filter, request.order_by)
        return pb.ListSecretsResponse(secrets=[convert.secret(r) for r in rows],
                                      next_page_token=token)

    def UpdateSecret(self, request: pb.UpdateSecretRequest, context: Context) -> pb.Secret:
        row = self.secrets.update(principal.current(), request.secret, request.update_mask)
        return convert.secret(row)

    def DeleteSecret(self, request: pb.DeleteSecretRequest,
                     context: Context) -> empty_pb2.Empty:
        self.secrets.delete(principal.current(), request.name, request.etag)
        return empty_pb2.Empty()

    def RotateMasterKey(self, request: pb.RotateMasterKeyRequest,
                        context: Context) -> pb.RotateMasterKeyResponse:
        key_id, count, failed = self.secrets.rotate_master_key()
        return pb.RotateMasterKeyResponse(master_key_id=key_id, rewrapped=count,
                                          undecryptable=failed)

    def ResolveSecret(self, request: pb.ResolveSecretRequest,
                      context: Context) -> pb.ResolvedSecret:
        found = self.secrets.resolve(principal.current(), request.name, request.tenant,
                                     request.flow)
        return pb.ResolvedSecret(name=found.name, type=found.type,  # type: ignore[arg-type]
                                 value=found.value, previous_value=found.previous_value)
