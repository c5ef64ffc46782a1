"""The ComponentService servicer: converts protos to calls of `logic.Components` and back.

The RPC's permission, the token and REQUIRED fields are checked by the shared interceptors;
owner/tenant rules are the logic's. The caller is `principal.current()` — for a platform
service sending `x-oih-on-behalf-of`, that is the user it acts for.
"""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2

from oih.components.v1 import components_pb2 as pb
from oih.components.v1 import components_pb2_grpc
from oih_components import convert
from oih_components.logic import Components
from oih_runtime import principal

Context = grpc.ServicerContext


class ComponentServicer(components_pb2_grpc.ComponentServiceServicer):
    def __init__(self, components: Components) -> None:
        self.components = components

    def CreateComponent(self, request: pb.CreateComponentRequest,
                        context: Context) -> pb.Component:
        return convert.component(self.components.create(principal.current(), request.component))

    def GetComponent(self, request: pb.GetComponentRequest, context: Context) -> pb.Component:
        return convert.component(self.components.get(principal.current(), request.name))

    def ListComponents(self, request: pb.ListComponentsRequest,
                       context: Context) -> pb.ListComponentsResponse:
        rows, token = self.components.list(principal.current(), request.page_size,
                                           request.page_token, request.filter, request.order_by)
        return pb.ListComponentsResponse(components=[convert.component(r) for r in rows],
                                         next_page_token=token)

    def UpdateComponent(self, request: pb.UpdateComponentRequest,
                        context: Context) -> pb.Component:
        row = self.components.update(principal.current(), request.component, request.update_mask)
        return convert.component(row)

    def DeleteComponent(self, request: pb.DeleteComponentRequest,
                        context: Context) -> empty_pb2.Empty:
        self.components.delete(principal.current(), request.name, request.etag)
        return empty_pb2.Empty()
