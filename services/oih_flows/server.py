"""Wires the Flow Repository: database, token verification, the Component Repository client,
logic, servicer, the event bus (outbox relay and consumer) and the transition sweeper."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from oih.flows.v1 import flows_pb2, flows_pb2_grpc
from oih_flows import models
from oih_flows.components import ComponentDirectory
from oih_flows.events import HANDLERS
from oih_flows.graph import ComponentLookup, SecretLookup
from oih_flows.logic import Flows
from oih_flows.secrets import SecretDirectory
from oih_flows.servicer import FlowServicer
from oih_flows.settings import FlowsSettings
from oih_flows.sweeper import Sweeper
from oih_runtime import server
from oih_runtime.bus import Consumer, Relay
from oih_runtime.bus.models import TABLES as BUS_TABLES
from oih_runtime.clients import authenticated_channel
from oih_runtime.db import make_engine
from oih_runtime.identity import PlatformIdentity, platform_identity
from oih_runtime.settings import ServiceSettings
from oih_runtime.tokens import TokenVerifier

log = logging.getLogger(__name__)

SERVICE_NAME = flows_pb2.DESCRIPTOR.services_by_name["FlowService"].full_name


@dataclass
class Built:
    service: server.Service
    engine: Engine
    flows: Flows
    servicer: FlowServicer
    sweeper: Sweeper
    consumer: Consumer | None = None
    relay: Relay | None = None
    #: Starts the background work (bus and sweeper); `service.on_stop` stops it.
    start_background: Callable[[], None] = field(default=lambda: None)


def _components(identity: PlatformIdentity, flows_settings: FlowsSettings) -> ComponentLookup:
    channel = authenticated_channel(flows_settings.components_address, identity.token.get)
    return ComponentDirectory(channel)


def _secrets(identity: PlatformIdentity, flows_settings: FlowsSettings) -> SecretLookup:
    channel = authenticated_channel(flows_settings.secrets_address, identity.token.get)
    return SecretDirectory(channel)


def build(settings: ServiceSettings, flows_settings: FlowsSettings, *,
          verifier: TokenVerifier | None = None, components: ComponentLookup | None = None,
          secrets: SecretLookup | None = None, bus: bool = True, exchange: str | None = None, consumer_name: str | None = None
          ) -> Built:
    """Everything the service needs; `start_background()` starts its threads. Tests pass their
    own `verifier` and `components`, `bus=False` to run without RabbitMQ (the outbox still
    records every event), or an exchange and consumer name of their own on a shared broker."""
    engine = make_engine(settings.database_url, tables=(*models.TABLES, *BUS_TABLES))
    exchange = exchange or settings.events_exchange
    consumer_name = consumer_name or settings.event_consumer
    identity = platform_identity(settings, exchange=exchange)
    flows = Flows(engine, components or _components(identity, flows_settings),
                  secrets or _secrets(identity, flows_settings))
    servicer = FlowServicer(flows)
    sweeper = Sweeper(engine, flows_settings.transition_timeout, flows_settings.sweep_interval)
    service = server.Service(
        name="flows",
        registrations=[lambda s: flows_pb2_grpc.add_FlowServiceServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
        verifier=verifier or identity.verifier,
    )
    built = Built(service, engine, flows, servicer, sweeper)
    background: list[Callable[[], None]] = [sweeper.start]
    service.on_stop.append(sweeper.stop)
    if verifier is None:  # our own verifier: keep its revocation list current
        background.append(identity.feed.start)
        service.on_stop.append(identity.feed.stop)
    if bus:
        built.relay = Relay(engine, url=settings.rabbitmq_url, exchange=exchange,
                            name="oih-flows-relay")
        built.consumer = Consumer(engine, consumer_name, url=settings.rabbitmq_url,
                                  exchange=exchange)
        for event_type, (handler, payload_type) in HANDLERS.items():
            built.consumer.on(event_type, handler, payload_type)
        background += [built.relay.start, built.consumer.start]
        # Stop consuming first (finish and ack the current event), then relay what is left.
        service.on_stop += [built.consumer.stop, built.relay.stop]

    def start_background() -> None:
        for start in background:
            start()

    built.start_background = start_background
    return built
