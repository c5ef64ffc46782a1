"""Wires the Scheduler: database, firing, ticker, servicer, event bus, server bootstrap."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from oih.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from oih_runtime import server
from oih_runtime.bus import Consumer
from oih_runtime.bus.models import TABLES as BUS_TABLES
from oih_runtime.clients import authenticated_channel
from oih_runtime.db import make_engine
from oih_runtime.identity import platform_identity
from oih_runtime.settings import ServiceSettings
from oih_runtime.tokens import TokenVerifier

from . import events, models
from .firing import Firing, Launcher
from .launcher import OrchestratorLauncher
from .logic import Schedules
from .servicer import ScheduleServicer
from .settings import SchedulerSettings
from .ticker import Ticker

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["ScheduleService"].full_name
TABLES = (*models.TABLES, *BUS_TABLES)


@dataclass
class Built:
    service: server.Service
    engine: Engine
    schedules: Schedules
    firing: Firing
    ticker: Ticker
    consumer: Consumer | None
    background: list[Callable[[], None]] = field(default_factory=list)

    def start_background(self) -> None:
        for start in self.background:
            start()


def build(settings: ServiceSettings, own: SchedulerSettings, *,
          verifier: TokenVerifier | None = None, launcher: Launcher | None = None,
          bus: bool = True) -> Built:
    """Everything the service needs; `start_background()` starts the ticker and the event
    consumer. Tests pass their own `verifier` and `launcher`, or no bus."""
    engine = make_engine(settings.database_url, tables=TABLES)
    identity = platform_identity(settings, exchange=settings.events_exchange)
    if launcher is None:
        launcher = OrchestratorLauncher(
            authenticated_channel(own.orchestrator_address, identity.token.get))
    firing = Firing(engine, launcher, misfire_grace=own.misfire_grace)
    schedules = Schedules(engine)
    ticker = Ticker(firing, max_sleep=own.max_sleep, tick_retention=own.tick_retention)
    servicer = ScheduleServicer(schedules, firing)
    service = server.Service(
        name="scheduler",
        registrations=[lambda s: scheduler_pb2_grpc.add_ScheduleServiceServicer_to_server(
            servicer, s)],
        service_names=[SERVICE_NAME],
        verifier=verifier or identity.verifier,
    )
    built = Built(service, engine, schedules, firing, ticker, None)
    if verifier is None:
        built.background.append(identity.feed.start)
        service.on_stop.append(identity.feed.stop)
    if bus:
        consumer = Consumer(engine, settings.event_consumer, url=settings.rabbitmq_url,
                            exchange=settings.events_exchange)
        events.register(consumer)
        built.consumer = consumer
        built.background.append(consumer.start)
        service.on_stop.append(consumer.stop)
    built.background.append(ticker.start)
    service.on_stop.append(ticker.stop)
    return built
