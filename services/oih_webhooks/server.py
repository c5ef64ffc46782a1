"""Wires the Webhooks service: token verification (for bearer-authenticated hooks and nothing
else: the RPC is public), the Flow Repository, the orchestrator and the Secrets service as
clients with the service's token, and the reply queue of synchronous requests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from oih.webhooks.v1 import webhooks_pb2, webhooks_pb2_grpc
from oih_runtime import server
from oih_runtime.clients import authenticated_channel
from oih_runtime.identity import platform_identity
from oih_runtime.settings import ServiceSettings
from oih_runtime.tokens import TokenVerifier

from .flows import FlowDirectory
from .keys import KeySource, secrets_service
from .logic import StartExecution, Webhooks
from .replies import ReplyWaiter
from .servicer import WebhookServicer
from .settings import WebhooksSettings
from .starts import OrchestratorStarts

SERVICE_NAME = webhooks_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name


@dataclass
class Built:
    service: server.Service
    webhooks: Webhooks
    replies: ReplyWaiter
    start_background: Callable[[], None] = field(default=lambda: None)


def build(settings: ServiceSettings, own: WebhooksSettings, *,
          verifier: TokenVerifier | None = None, keys: KeySource | None = None,
          start: StartExecution | None = None) -> Built:
    """Tests may pass their own `verifier` (a test issuer), HMAC `keys` source or `start`."""
    identity = platform_identity(settings)
    own_verifier = verifier is None
    verifier = verifier or identity.verifier
    token = identity.token.get
    flows = FlowDirectory(authenticated_channel(own.flows_address, token),
                          own.flow_cache_seconds)
    replies = ReplyWaiter(settings.rabbitmq_url)
    webhooks = Webhooks(
        flows.get,
        start or OrchestratorStarts(authenticated_channel(own.orchestrator_address, token)),
        keys or secrets_service(authenticated_channel(own.secrets_address, token)),
        verifier, replies, not_found_delay=own.not_found_delay)
    servicer = WebhookServicer(webhooks)
    service = server.Service(
        name="webhooks",
        registrations=[lambda s: webhooks_pb2_grpc.add_WebhookServiceServicer_to_server(
            servicer, s)],
        service_names=[SERVICE_NAME],
        verifier=verifier,
    )
    built = Built(service, webhooks, replies)
    background: list[Callable[[], None]] = [replies.start]
    service.on_stop.append(replies.stop)
    if own_verifier:  # keep its revocation list current
        background.append(identity.feed.start)
        service.on_stop.append(identity.feed.stop)

    def start_background() -> None:
        for begin in background:
            begin()

    built.start_background = start_background
    return built
