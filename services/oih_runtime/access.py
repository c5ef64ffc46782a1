"""Access rules declared in the contract (`option (oih.auth.v1.rule)`), read from descriptors."""

from __future__ import annotations

from functools import cache

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

from oih.auth.v1 import auth_pb2


@cache
def method_descriptor(full_method: str) -> MethodDescriptor | None:
    """`/oih.iam.v1.IamService/Login` → its descriptor (None for non-OIH methods like health)."""
    name = full_method.lstrip("/").replace("/", ".")
    try:
        return descriptor_pool.Default().FindMethodByName(name)
    except KeyError:
        return None


@cache
def rule_for(full_method: str) -> auth_pb2.AccessRule | None:
    """The declared rule of an RPC, or None when the contract declares none (which denies)."""
    method = method_descriptor(full_method)
    if method is None:
        return None
    options = method.GetOptions()
    if not options.HasExtension(auth_pb2.rule):
        return None
    return options.Extensions[auth_pb2.rule]


#: Infrastructure services that answer without a token (probes and tooling).
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                 "/grpc.reflection.v1.ServerReflection/")


def is_open_infrastructure(full_method: str) -> bool:
    return full_method.startswith(OPEN_SERVICES)
