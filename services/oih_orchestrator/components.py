"""Reading components from the Component Repository, and registering the built-in ones.

The orchestrator calls with its own service-account token (not on anyone's behalf): the
Flow Repository already checked at save time that the flow's author may use each component,
and a flow must keep running when its author's token has long expired.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format

from oih.components.v1 import components_pb2 as pb
from oih.components.v1 import components_pb2_grpc

log = logging.getLogger(__name__)

#: name → the component, or None when it does not exist. Raises for other failures.
ComponentLookup = Callable[[str], pb.Component | None]


class ComponentsUnavailable(RuntimeError):
    """The Component Repository did not answer (a retry may succeed)."""


class ComponentDirectory:
    def __init__(self, channel: grpc.Channel, timeout: float = 10.0) -> None:
        self.stub = components_pb2_grpc.ComponentServiceStub(channel)
        self.timeout = timeout

    def __call__(self, name: str) -> pb.Component | None:
        try:
            return self.stub.GetComponent(pb.GetComponentRequest(name=name),
                                          timeout=self.timeout)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise ComponentsUnavailable(
                f"the Component Repository could not be asked about {name}: "
                f"{error.code().name} {error.details()}") from None


def entry_point(component: pb.Component) -> str:
    kind = component.WhichOneof("distribution")
    return component.python_entry_point.object_reference if kind == "python_entry_point" else ""


def image(component: pb.Component) -> str:
    kind = component.WhichOneof("distribution")
    return component.container_image.image if kind == "container_image" else ""


# --- built-ins -------------------------------------------------------------------------------

def builtin_component(described: dict[str, Any]) -> pb.Component:
    """The Component of one `oih_builtins.BUILTIN_COMPONENTS` entry: public, Python entry point."""
    def functions(items: list[dict[str, Any]]) -> list[pb.ComponentFunction]:
        result = []
        for item in items:
            function = pb.ComponentFunction(name=item["name"], description=item["description"])
            if item.get("config_schema"):
                json_format.ParseDict(item["config_schema"], function.config_schema)
            result.append(function)
        return result

    return pb.Component(
        display_name=described["name"], description=described["description"],
        version=described["version"], access=pb.ACCESS_PUBLIC,
        python_entry_point=pb.PythonEntryPoint(object_reference=described["entry_point"]),
        triggers=functions(described["triggers"]), actions=functions(described["actions"]))


def register_builtins(stub: components_pb2_grpc.ComponentServiceStub,
                      builtins: list[dict[str, Any]] | None = None,
                      timeout: float = 10.0) -> dict[str, str]:
    """Create the built-ins that are missing (found by display name among public components,
    so a restart creates nothing twice). Returns display name → component name."""
    if builtins is None:
        from oih_builtins import BUILTIN_COMPONENTS

        builtins = BUILTIN_COMPONENTS
    names: dict[str, str] = {}
    for described in builtins:
        wanted = builtin_component(described)
        found = stub.ListComponents(pb.ListComponentsRequest(
            filter=f'access=PUBLIC AND display_name="{wanted.display_name}"', page_size=1),
            timeout=timeout).components
        if found:
            names[wanted.display_name] = found[0].name
            continue
        created = stub.CreateComponent(pb.CreateComponentRequest(component=wanted),
                                       timeout=timeout)
        names[wanted.display_name] = created.name
        log.info("registered a built-in component",
                 extra={"component": created.name, "display_name": wanted.display_name})
    return names
