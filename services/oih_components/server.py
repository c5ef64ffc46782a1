"""Wires the Component Repository: database, logic, servicer, event bus, server bootstrap."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from oih.components.v1 import components_pb2, components_pb2_grpc
from oih_components import events, models
from oih_components.logic import Components
from oih_components.servicer import ComponentServicer
from oih_runtime import server
from oih_runtime.bus import Consumer, Relay
from oih_runtime.bus.models import TABLES as BUS_TABLES
from oih_runtime.db import make_engine
from oih_runtime.identity import PlatformIdentity, platform_identity
from oih_runtime.settings import ServiceSettings
from oih_runtime.tokens import TokenVerifier

SERVICE_NAME = components_pb2.DESCRIPTOR.services_by_name["ComponentService"].full_name


@dataclass
class Built:
    service: server.Service
    engine: Engine
    components: Components
    servicer: ComponentServicer
    relay: Relay
    consumer: Consumer
    identity: PlatformIdentity | None = None

    def start_bus(self) -> None:
        """Start relaying the outbox, consuming IAM's events and following revocations (all
        reconnect on their own, so RabbitMQ being down delays events but never fails an RPC)."""
        self.relay.start()
        self.consumer.start()
        if self.identity is not None:
            self.identity.feed.start()


def build(settings: ServiceSettings, verifier: TokenVerifier | None = None) -> Built:
    """Everything but the running threads: tests use it without a broker."""
    identity = platform_identity(settings, exchange=settings.events_exchange) if verifier is None else None
    engine = make_engine(settings.database_url, tables=(*models.TABLES, *BUS_TABLES))
    components = Components(engine)
    servicer = ComponentServicer(components)
    relay = Relay(engine, url=settings.rabbitmq_url, exchange=settings.events_exchange,
                  name="oih-components-relay")
    consumer = Consumer(engine, settings.event_consumer, url=settings.rabbitmq_url,
                        exchange=settings.events_exchange)
    events.register(consumer)
    service = server.Service(
        name="components",
        registrations=[
            lambda s: components_pb2_grpc.add_ComponentServiceServicer_to_server(servicer, s)
        ],
        service_names=[SERVICE_NAME],
        verifier=identity.verifier if identity else verifier,  # type: ignore[arg-type]
        # Stop taking events first, then flush what the last RPCs wrote.
        on_stop=[consumer.stop, relay.stop],
    )
    if identity is not None:
        service.on_stop.append(identity.feed.stop)
    return Built(service, engine, components, servicer, relay, consumer, identity)
