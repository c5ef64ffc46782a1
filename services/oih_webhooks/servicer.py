"""The WebhookService servicer: turns the transcoded gRPC call back into the HTTP request it
was (method, path suffix, query, headers, raw body) and the answer into an HttpBody plus the
response metadata the gateway turns into the HTTP status and headers."""

from __future__ import annotations

import re
import urllib.parse

import grpc
from google.api import httpbody_pb2

from oih.webhooks.v1 import webhooks_pb2, webhooks_pb2_grpc

from .logic import HookAnswer, HookRequest, Webhooks

Context = grpc.ServicerContext

#: Request headers the gateway adds (services/oih_gateway/render.py): the HTTP method and the
#: original path with its query string, which the transcoded call no longer has.
METHOD_HEADER, PATH_HEADER = "x-oih-http-method", "x-oih-http-path"
#: Response metadata the gateway turns into the HTTP status.
STATUS_HEADER = "x-oih-reply-status"

_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_NOT_SETTABLE = frozenset({"content-type", "content-length", "transfer-encoding", "connection",
                           "te", "trailer", "upgrade", "keep-alive", "date", "server",
                           STATUS_HEADER})


class WebhookServicer(webhooks_pb2_grpc.WebhookServiceServicer):
    def __init__(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks

    def ReceiveWebhook(self, request: webhooks_pb2.ReceiveWebhookRequest,
                       context: Context) -> httpbody_pb2.HttpBody:
        headers = {key.lower(): value for key, value in context.invocation_metadata()
                   if isinstance(value, str)}
        path = headers.get(PATH_HEADER, "")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query, keep_blank_values=True)
        has_body = bool(request.body.data) or bool(request.body.content_type)
        method = headers.get(METHOD_HEADER, "").upper() or ("POST" if has_body else "GET")
        answer = self.webhooks.receive(HookRequest(
            flow_id=request.flow_id, method=method, path_suffix=request.path_suffix,
            query=query, headers=headers, content_type=request.body.content_type,
            body=request.body.data))
        context.send_initial_metadata(_response_metadata(answer))
        return httpbody_pb2.HttpBody(content_type=answer.content_type, data=answer.body)


def _response_metadata(answer: HookAnswer) -> tuple[tuple[str, str], ...]:
    metadata = [(STATUS_HEADER, str(answer.status))] if answer.status != 200 else []
    for name, value in answer.headers.items():
        key = name.lower()
        if (_HEADER_NAME.match(key) and key not in _NOT_SETTABLE
                and not key.startswith(("grpc-", "x-envoy-")) and value.isprintable()
                and value.isascii()):
            metadata.append((key, value))
    return tuple(metadata)
