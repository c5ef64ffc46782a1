"""Wires the Snapshots service: database, logic, servicer, the snapshot-write consumer, the
event bus (consumer and outbox relay), server bootstrap."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from oih.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from oih_dataplane import topology
from oih_runtime import server
from oih_runtime.bus import Consumer, Relay
from oih_runtime.bus.models import TABLES as BUS_TABLES
from oih_runtime.clients import authenticated_channel
from oih_runtime.db import make_engine
from oih_runtime.identity import platform_identity
from oih_runtime.settings import DEFAULT_PORTS, ServiceSettings
from oih_runtime.tokens import TokenVerifier

from . import events, models
from .ingest import FlowTenants, SnapshotConsumer
from .logic import Snapshots
from .servicer import SnapshotServicer

SERVICE_NAME = snapshots_pb2.DESCRIPTOR.services_by_name["SnapshotService"].full_name
TABLES = (*models.TABLES, *BUS_TABLES)


@dataclass
class Built:
    service: server.Service
    engine: Engine
    snapshots: Snapshots
    servicer: SnapshotServicer
    ingest: SnapshotConsumer
    consumer: Consumer
    relay: Relay
    background: list[Callable[[], None]] = field(default_factory=list)

    def start_background(self) -> None:
        for start in self.background:
            start()


def build(settings: ServiceSettings, verifier: TokenVerifier | None = None) -> Built:
    """Everything the service needs; `start_background()` starts consuming writes and events
    and relaying the outbox. Tests pass their own `verifier`."""
    engine = make_engine(settings.database_url, tables=TABLES)
    snapshots = Snapshots(engine)
    servicer = SnapshotServicer(snapshots)
    identity = None if verifier is not None else platform_identity(
        settings, exchange=settings.events_exchange)
    # The Flow Repository tells the tenant of a flow this service has not heard of yet.
    flows_address = os.environ.get("OIH_FLOWS_ADDRESS", f"127.0.0.1:{DEFAULT_PORTS['flows']}")
    lookup = None if identity is None else FlowTenants(
        authenticated_channel(flows_address, identity.token.get))
    ingest = SnapshotConsumer(engine, settings.rabbitmq_url,
                              topology.snapshots_queue(settings.bus_namespace),
                              **({"lookup": lookup} if lookup is not None else {}))
    consumer = Consumer(engine, settings.event_consumer, url=settings.rabbitmq_url,
                        exchange=settings.events_exchange)
    events.register(consumer)
    relay = Relay(engine, url=settings.rabbitmq_url, exchange=settings.events_exchange,
                  name="oih-snapshots-relay")
    service = server.Service(
        name="snapshots",
        registrations=[lambda s: snapshots_pb2_grpc.add_SnapshotServiceServicer_to_server(
            servicer, s)],
        service_names=[SERVICE_NAME],
        verifier=verifier or identity.verifier,  # type: ignore[union-attr]
        # Stop taking writes and events first, then relay what the last ones announced.
        on_stop=[ingest.stop, consumer.stop, relay.stop],
    )
    built = Built(service, engine, snapshots, servicer, ingest, consumer, relay,
                  background=[relay.start, consumer.start, ingest.start])
    if identity is not None:
        built.background.append(identity.feed.start)
        service.on_stop.append(identity.feed.stop)
    return built
