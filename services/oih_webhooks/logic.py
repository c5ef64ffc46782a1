"""A webhook request, from HTTP to a started execution (no gRPC server code here).

Order of the checks, and why: the flow first (unknown or not ACTIVE → 404 after a fixed delay,
so ids cannot be probed quickly), then the request's authentication (nothing is enqueued for a
bad signature or token), then the message, then StartExecution, which answers only once the
broker confirmed the first step's message (or refuses: not running → 404, backlog → 429).
"""

from __future__ import annotations

import base64
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Protocol

from oih.flows.v1 import flows_pb2
from oih_runtime import jsontext
from oih_runtime.depth import MAX_JSON_DEPTH, TOO_DEEP
from oih_runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from oih_runtime.tokens import TokenVerifier

from . import signatures
from .keys import KeySource
from .replies import HttpReply, ReplyWaiter
from .settings import DEFAULT_MAX_QUEUED

log = logging.getLogger(__name__)

FLOW_ID = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
SYNC = flows_pb2.WebhookSettings.RESPONSE_MODE_SYNC
STANDARD = flows_pb2.WebhookSettings.SIGNATURE_SCHEME_STANDARD_WEBHOOKS
DEFAULT_SYNC_TIMEOUT = 30.0
DEFAULT_TOLERANCE = 300.0
MAX_IDEMPOTENCY_KEY = 200
# Idempotent executions get ids derived from (flow, key) in this namespace.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1d3c2e-0b7a-5c55-9f0e-6f6968000007")

#: Headers never passed to the flow: credentials, and what the gateway and gRPC add.
CREDENTIALS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key",
                         "webhook-signature"})
TRANSPORT = frozenset({"content-type", "content-length", "te", "host", "transfer-encoding",
                       "connection", "keep-alive", "upgrade", "accept-encoding"})
TRANSPORT_PREFIXES = (":", "grpc-", "x-envoy-", "x-oih-")


@dataclass(frozen=True)
class HookRequest:
    flow_id: str
    method: str
    path_suffix: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]  # lower-case names
    content_type: str
    body: bytes


@dataclass(frozen=True)
class HookAnswer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StartRequest:
    flow: str
    data_json: str
    metadata_json: str
    execution_id: str
    reply_to: str
    max_queued_messages: int


class StartExecution(Protocol):
    def __call__(self, request: StartRequest) -> tuple[str, bool]:
        """Start the execution; returns its name and whether it is new. Raises domain errors:
        NotFound when the flow is not running, ResourceExhausted on backlog."""


class Webhooks:
    def __init__(self, flows: Callable[[str], flows_pb2.Flow | None], start: StartExecution,
                 keys: KeySource, verifier: TokenVerifier, replies: ReplyWaiter | None, *,
                 not_found_delay: float = 1.0, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.flows = flows
        self.start = start
        self.keys = keys
        self.verifier = verifier
        self.replies = replies
        self.not_found_delay = not_found_delay
        self.clock = clock
        self.sleep = sleep

    def receive(self, request: HookRequest) -> HookAnswer:
        flow = self.flows(request.flow_id) if FLOW_ID.match(request.flow_id) else None
        if flow is None or flow.state != flows_pb2.STATE_ACTIVE:
            raise self._not_found(request.flow_id)
        settings = flow.webhook_settings
        if settings.require_auth:
            self._authenticate(flow, request)
        execution_id = self._execution_id(settings, request)
        sync = settings.response_mode == SYNC and self.replies is not None
        start = StartRequest(
            flow=flow.name, data_json=jsontext.dumps(_data(request)),
            metadata_json=jsontext.dumps(_metadata(request, settings)),
            execution_id=execution_id or (str(uuid.uuid4()) if sync else ""),
            reply_to=self.replies.routing_key if sync and self.replies else "",
            max_queued_messages=settings.max_queued_messages or DEFAULT_MAX_QUEUED)
        if not sync:
            name, _new = self._start(start)
            return _execution_answer(name)
        return self._start_and_wait(flow, start, settings)

    # --- steps --------------------------------------------------------------------------

    def _not_found(self, flow_id: str) -> NotFound:
        # The same delay for every kind of miss, so timing does not tell them apart.
        self.sleep(self.not_found_delay)
        return NotFound("flow", f"flows/{flow_id}")

    def _start(self, start: StartRequest) -> tuple[str, bool]:
        try:
            return self.start(start)
        except NotFound:
            raise self._not_found(start.flow.removeprefix("flows/")) from None

    def _start_and_wait(self, flow: flows_pb2.Flow, start: StartRequest,
                        settings: flows_pb2.WebhookSettings) -> HookAnswer:
        assert self.replies is not None
        flow_id = flow.name.removeprefix("flows/")
        try:
            self.replies.bind(flow_id)
        except LookupError:
            raise self._not_found(flow_id) from None  # its exchange is gone: not running
        waiting, owned = self.replies.expect(flow_id, start.execution_id)
        try:
            name, new = self._start(start)
            if not new:
                # An idempotent repeat: the first request got (or missed) the reply; this one
                # learns which execution it was, like an asynchronous request.
                return _execution_answer(name)
            timeout = (settings.sync_timeout.ToTimedelta().total_seconds()
                       if settings.HasField("sync_timeout") else DEFAULT_SYNC_TIMEOUT)
            try:
                reply = waiting.result(timeout=timeout)
            except FutureTimeout:
                raise DeadlineExceeded(f"the flow did not reply within {timeout:g}s; it keeps "
                                       f"running as {name}") from None
            return _reply_answer(reply)
        finally:
            if owned:
                self.replies.forget(start.execution_id)

    def _authenticate(self, flow: flows_pb2.Flow, request: HookRequest) -> None:
        settings = flow.webhook_settings
        if not settings.hmac_secret:
            self._bearer(flow, request)
            return
        try:
            keys = self.keys(settings.hmac_secret, flow.tenant, flow.name)
        except FailedPrecondition as error:
            # The flow's key is gone (secret deleted): no signature can be right. The caller
            # learns no more than for a wrong signature; the log says why.
            log.warning("webhook key unusable", extra={"flow": flow.name,
                                                       "reason": error.message})
            raise PermissionDenied("webhook signature refused", reason="BAD_SIGNATURE") from None
        try:
            if settings.signature_scheme == STANDARD:
                tolerance = (settings.timestamp_tolerance.ToTimedelta().total_seconds()
                             if settings.HasField("timestamp_tolerance") else DEFAULT_TOLERANCE)
                signatures.check_standard(
                    keys, request.body, message_id=request.headers.get("webhook-id", ""),
                    timestamp=request.headers.get("webhook-timestamp", ""),
                    signatures=request.headers.get("webhook-signature", ""),
                    now=self.clock(), tolerance=tolerance)
            else:
                signatures.check_hmac(
                    keys, request.body,
                    request.headers.get((settings.hmac_header or "x-hmac").lower(), ""),
                    algorithm=settings.hmac_algorithm or "sha256",
                    encoding=settings.hmac_encoding or "hex")
        except signatures.BadSignature as error:
            raise PermissionDenied(f"webhook signature refused: {error}",
                                   reason="BAD_SIGNATURE") from None

    def _bearer(self, flow: flows_pb2.Flow, request: HookRequest) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("this webhook needs an access token (Authorization: Bearer …)")
        caller = self.verifier.verify(token.strip())
        if not caller.sees_tenant(flow.tenant):
            raise self._not_found(flow.name.removeprefix("flows/"))
        if not caller.has("flows.execute"):
            raise PermissionDenied("this webhook needs the permission flows.execute",
                                   reason="MISSING_PERMISSION")

    @staticmethod
    def _execution_id(settings: flows_pb2.WebhookSettings, request: HookRequest) -> str:
        key = request.headers.get("idempotency-key", "")
        if not key and settings.signature_scheme == STANDARD:
            key = request.headers.get("webhook-id", "")
        if not key:
            return ""
        if len(key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidArgument.field("Idempotency-Key",
                                        f"at most {MAX_IDEMPOTENCY_KEY} characters")
        flow_id = request.flow_id
        return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{flow_id}/{key}"))


# --- the message and the answer ----------------------------------------------------------

def _data(request: HookRequest) -> dict[str, Any]:
    """The JSON body as sent (integers exact), the query for a body-less GET, or the raw
    body as base64 when it is not a JSON object."""
    if not request.body.strip():
        return _flat_query(request.query) if request.method == "GET" else {}
    try:
        value = jsontext.loads(request.body)
    except RecursionError:
        raise InvalidArgument.field("body", TOO_DEEP) from None
    except ValueError:
        value = None
    if isinstance(value, dict):
        if jsontext.depth(value) > MAX_JSON_DEPTH:
            raise InvalidArgument.field("body", TOO_DEEP)
        return value
    return {"raw": base64.b64encode(request.body).decode()}


def _flat_query(query: Mapping[str, list[str]]) -> dict[str, Any]:
    return {name: values[0] if len(values) == 1 else list(values)
            for name, values in query.items()}


def _metadata(request: HookRequest, settings: flows_pb2.WebhookSettings) -> dict[str, Any]:
    hidden = set(CREDENTIALS)
    hidden.add((settings.hmac_header or "x-hmac").lower())
    headers = {name: value for name, value in request.headers.items()
               if name not in hidden and name not in TRANSPORT
               and not name.startswith(TRANSPORT_PREFIXES)}
    return {"method": request.method, "path_suffix": request.path_suffix,
            "query": _flat_query(request.query), "content_type": request.content_type,
            "headers": headers}


def _execution_answer(name: str) -> HookAnswer:
    return HookAnswer(200, "application/json", jsontext.dumps({"execution": name}).encode())


def _reply_answer(reply: HttpReply) -> HookAnswer:
    return HookAnswer(reply.status, reply.content_type, reply.body, dict(reply.headers))
