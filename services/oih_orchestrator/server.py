"""Wires the orchestrator: database, driver, broker connection and management API, the
orchestrator logic, the servicer, the event bus (outbox relay and consumer), the reconciler and
the registration of the built-in components."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from sqlalchemy.engine import Engine

from oih.components.v1 import components_pb2_grpc
from oih.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from oih_dataplane import topology
from oih_runtime import server
from oih_runtime.background import Periodic, UntilDone
from oih_runtime.bus import Consumer, Relay
from oih_runtime.bus.models import TABLES as BUS_TABLES
from oih_runtime.bus.pipelined import PipelinedPublisher
from oih_runtime.clients import authenticated_channel
from oih_runtime.clock import utcnow
from oih_runtime.db import make_engine
from oih_runtime.identity import platform_identity
from oih_runtime.secrets_client import SecretsClient
from oih_runtime.settings import ServiceSettings
from oih_runtime.tokens import TokenVerifier

from . import events, executions, models
from .amqp import Amqp
from .components import ComponentDirectory, ComponentLookup, register_builtins
from .credentials import Resolve
from .drivers import Driver
from .drivers.local import LocalDriver
from .execute import Starter, StartRecorder, forget_starts
from .executions import models as executions_models
from .logic import Orchestrator
from .management import Management
from .servicer import OrchestratorServicer, ServiceContext
from .settings import OrchestratorSettings
from .snapshots import SnapshotReader

#: The orchestrator's tables: its deployments, the executions view's, and the bus's.
TABLES = (*models.TABLES, *executions_models.TABLES, *BUS_TABLES)

log = logging.getLogger(__name__)

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name


@dataclass
class Built:
    service: server.Service
    engine: Engine
    orchestrator: Orchestrator
    driver: Driver
    amqp: Amqp
    servicer: OrchestratorServicer
    reconciler: Periodic
    builtins: UntilDone | None = None
    consumer: Consumer | None = None
    relay: Relay | None = None
    #: Starts the background work; `service.on_stop` stops it (workers keep running).
    start_background: Callable[[], None] = field(default=lambda: None)


def make_driver(settings: ServiceSettings, own: OrchestratorSettings) -> Driver:
    if own.driver == "local":
        return LocalDriver(settings.data_dir)
    if own.driver == "kubernetes":
        # Imported only when chosen: the kubernetes client is an optional dependency.
        kubernetes: Any = importlib.import_module("oih_orchestrator.drivers.kubernetes")
        return kubernetes.KubernetesDriver(  # type: ignore[no-any-return]
            namespace=own.kubernetes_namespace or kubernetes.DEFAULT_NAMESPACE,
            python_image=own.python_image,
            egress_allowed_networks=own.egress_allowed_networks)
    raise ValueError(f"unknown driver {own.driver!r}: use local or kubernetes")


def build(settings: ServiceSettings, own: OrchestratorSettings, *,
          verifier: TokenVerifier | None = None, components: ComponentLookup | None = None,
          components_channel: grpc.Channel | None = None, driver: Driver | None = None,
          resolve: Resolve | None = None, bus: bool = True, exchange: str | None = None,
          consumer_name: str | None = None) -> Built:
    """Everything the service needs; `start_background()` starts its threads. Tests pass their
    own `verifier`, `components` lookup or `components_channel` (with a token of their
    issuer), a driver, or an exchange and consumer name of their own on a shared broker."""
    exchange = exchange or settings.events_exchange
    consumer_name = consumer_name or settings.event_consumer
    engine = make_engine(settings.database_url, tables=TABLES)
    identity = platform_identity(settings, exchange=exchange)
    own_verifier = verifier is None
    verifier = verifier or identity.verifier
    if components is None or own.register_builtins:
        components_channel = components_channel or authenticated_channel(
            own.components_address, identity.token.get)
    lookup = components or ComponentDirectory(components_channel)  # type: ignore[arg-type]
    driver = driver or make_driver(settings, own)
    amqp = Amqp(settings.rabbitmq_url,
                snapshots_queue=topology.snapshots_queue(settings.bus_namespace))
    management = Management.for_broker(own.management_url, settings.rabbitmq_url)
    if resolve is None:
        # Resolving needs "secrets.resolve" on the platform's own service token.
        resolve = SecretsClient(authenticated_channel(own.secrets_address,
                                                      identity.token.get)).resolve
    orchestrator = Orchestrator(engine, driver, amqp, management, lookup,
                                worker_amqp_url=own.worker_amqp_url or settings.rabbitmq_url,
                                resolve=resolve, start_timeout=own.start_timeout)
    # Every trigger's first message goes through one publisher with shared pipelined confirms.
    starter = Starter(engine, amqp, PipelinedPublisher(settings.rabbitmq_url,
                                                       name="oih-trigger-publisher"),
                      StartRecorder(engine))
    servicer = OrchestratorServicer(ServiceContext(engine, amqp, orchestrator, starter))
    if own.snapshots_address:
        orchestrator.read_snapshots(SnapshotReader(
            authenticated_channel(own.snapshots_address, identity.token.get)))
        if isinstance(driver, LocalDriver):
            driver.refresh_spec = orchestrator.with_latest_snapshot
    service = server.Service(
        name="orchestrator",
        registrations=[lambda s: orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(
            servicer, s)],
        service_names=[SERVICE_NAME],
        verifier=verifier,
    )
    reconciler = Periodic(orchestrator.reconcile, own.reconcile_seconds, "oih-reconciler")
    built = Built(service, engine, orchestrator, driver, amqp, servicer, reconciler)
    background: list[Callable[[], None]] = [starter.start]
    # First: cancel starts in progress (their rows stay STARTING, for the next reconcile) and
    # let running stops finish, while the broker connections are still open.
    stops: list[Callable[[], None]] = [orchestrator.close]
    if own_verifier:  # keep its revocation list current
        background.append(identity.feed.start)
        stops.append(identity.feed.stop)
    if bus:
        # The executions view: reports of every running flow, and its retention.
        reports = executions.ReportsConsumer(engine, settings.rabbitmq_url)
        orchestrator.follow_reports(reports)
        retention = timedelta(days=executions.RetentionSettings.from_env().retention_days)

        def sweep() -> None:
            now = utcnow()
            executions.sweep(engine, now)
            forget_starts(engine, now - retention)  # idempotency ids live as long as the runs
        sweeper = Periodic(sweep, 60.0, "oih-executions-sweep")
        background += [reports.start, sweeper.start]
        stops += [reports.stop, sweeper.stop]
    background.append(driver.start)
    if own.register_builtins and components_channel is not None:
        stub = components_pb2_grpc.ComponentServiceStub(components_channel)
        built.builtins = UntilDone(lambda: register_builtins(stub), "oih-register-builtins")
        background.append(built.builtins.start)
        stops.append(built.builtins.stop)
    if bus:
        built.relay = Relay(engine, url=settings.rabbitmq_url, exchange=exchange,
                            name="oih-orchestrator-relay")
        built.consumer = Consumer(engine, consumer_name, url=settings.rabbitmq_url,
                                  exchange=exchange)
        events.register(built.consumer, orchestrator, starter)
        background += [built.relay.start, built.consumer.start]
        # Stop taking events first (finish the current one), then relay what is left.
        stops += [built.consumer.stop, reconciler.stop, built.relay.stop]
    else:
        stops.append(reconciler.stop)
    # Reconcile after the driver adopted what still runs; workers outlive the service.
    background.append(reconciler.start)
    stops.append(driver.close)
    stops += [starter.stop, amqp.close]
    service.on_stop.extend(stops)

    def start_background() -> None:
        for start in background:
            start()

    built.start_background = start_background
    return built
