"""Wires the Component Repository: database, logic, servicer, event bus, server bootstrap."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from sqlalchemy.engine import Engine

from oih.components.v1 import components_pb2, components_pb2_grpc
from oih.iam.v1 import iam_pb2_grpc
from oih_components import events
from oih_components.logic import Components
from oih_components.servicer import ComponentServicer
from oih_runtime import clients, server
from oih_runtime.bus import Consumer, Relay
from oih_runtime.db import make_engine
from oih_runtime.settings import ServiceSettings
from oih_runtime.tokens import KeyCache, TokenVerifier

SERVICE_NAME = components_pb2.DESCRIPTOR.services_by_name["ComponentService"].full_name


@dataclass
class Built:
    service: server.Service
    engine: Engine
    components: Components
    servicer: ComponentServicer
    relay: Relay
    consumer: Consumer

    def start_bus(self) -> None:
        """Start relaying the outbox and consuming IAM's events (both reconnect on their own,
        so RabbitMQ being down delays events but never fails an RPC)."""
        self.relay.start()
        self.consumer.start()


def iam_verifier(settings: ServiceSettings) -> TokenVerifier:
    """Verifies tokens against IAM's JWKS, fetched over gRPC and cached."""
    iam = iam_pb2_grpc.IamServiceStub(grpc.insecure_channel(settings.iam_address))
    return TokenVerifier(KeyCache(clients.iam_jwks_source(iam)), issuer=settings.jwt_issuer,
                         audience=settings.jwt_audience)


def build(settings: ServiceSettings, verifier: TokenVerifier | None = None) -> Built:
    """Everything but the running threads: tests use it without a broker."""
    engine = make_engine(settings.database_url)  # also creates the outbox tables (bus.models)
    components = Components(engine)
    servicer = ComponentServicer(components)
    relay = Relay(engine, url=settings.rabbitmq_url, name="oih-components-relay")
    consumer = Consumer(engine, "components", url=settings.rabbitmq_url)
    events.register(consumer)
    service = server.Service(
        name="components",
        registrations=[
            lambda s: components_pb2_grpc.add_ComponentServiceServicer_to_server(servicer, s)
        ],
        service_names=[SERVICE_NAME],
        verifier=verifier or iam_verifier(settings),
        # Stop taking events first, then flush what the last RPCs wrote.
        on_stop=[consumer.stop, relay.stop],
    )
    return Built(service, engine, components, servicer, relay, consumer)
