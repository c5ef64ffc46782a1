"""Asking the Component Repository about a node's component, as the user who called us.

The call carries the flow service's own service-account token (the channel adds it) and the
caller's token in `x-oih-on-behalf-of`, so the Component Repository judges visibility for the
user: a private component of someone else answers NOT_FOUND, exactly as if the user had asked.
"""

from __future__ import annotations

import grpc

from oih.components.v1 import components_pb2, components_pb2_grpc
from oih_runtime import principal
from oih_runtime.clients import on_behalf_of
from oih_runtime.errors import DomainError, PermissionDenied


class ComponentsUnavailable(DomainError):
    """The Component Repository did not answer: the flow cannot be checked, so it is not saved."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "COMPONENTS_UNAVAILABLE"


class ComponentDirectory:
    def __init__(self, channel: grpc.Channel, timeout: float = 10.0) -> None:
        self._stub = components_pb2_grpc.ComponentServiceStub(channel)
        self._timeout = timeout

    def __call__(self, name: str) -> components_pb2.Component | None:
        """The component as the current caller sees it, or None when it is not visible."""
        caller = principal.current()
        try:
            return self._stub.GetComponent(
                components_pb2.GetComponentRequest(name=name),
                metadata=on_behalf_of(caller.token), timeout=self._timeout,
            )
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return None
            if code == grpc.StatusCode.PERMISSION_DENIED:
                # The caller may not read components at all (it lacks components.read).
                raise PermissionDenied(
                    f"cannot check {name}: {error.details()}", reason="COMPONENTS_NOT_READABLE"
                ) from None
            raise ComponentsUnavailable(
                f"the Component Repository could not be asked about {name} "
                f"({code.name}); try again"
            ) from None
