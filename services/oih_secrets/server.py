"""Wires the Secrets service: master keys, database, logic, servicer, event bus, bootstrap."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from oih.secrets.v1 import secrets_pb2, secrets_pb2_grpc
from oih_runtime import crypto, server
from oih_runtime.bus import Consumer, Relay
from oih_runtime.bus.models import TABLES as BUS_TABLES
from oih_runtime.db import make_engine
from oih_runtime.identity import PlatformIdentity, platform_identity
from oih_runtime.settings import ServiceSettings
from oih_runtime.tokens import TokenVerifier
from oih_secrets import events, models
from oih_secrets.logic import Secrets
from oih_secrets.servicer import SecretServicer

SERVICE_NAME = secrets_pb2.DESCRIPTOR.services_by_name["SecretService"].full_name


@dataclass
class Built:
    service: server.Service
    engine: Engine
    secrets: Secrets
    servicer: SecretServicer
    relay: Relay
    consumer: Consumer
    identity: PlatformIdentity | None = None

    def start_bus(self) -> None:
        """Relay the outbox (changes and audit records), consume IAM's events, follow
        revocations; all reconnect on their own."""
        self.relay.start()
        self.consumer.start()
        if self.identity is not None:
            self.identity.feed.start()


def build(settings: ServiceSettings, verifier: TokenVerifier | None = None,
          keyring: crypto.Keyring | None = None) -> Built:
    """Everything but the running threads: tests use it without a broker. Without a master
    key (`OIH_SECRETS_MASTER_KEY_FILE` / `OIH_SECRETS_MASTER_KEY`) it refuses to build."""
    keyring = keyring or crypto.Keyring.from_env("secrets")
    identity = platform_identity(settings, exchange=settings.events_exchange) if verifier is None else None
    engine = make_engine(settings.database_url, tables=(*models.TABLES, *BUS_TABLES))
    secrets = Secrets(engine, keyring)
    servicer = SecretServicer(secrets)
    relay = Relay(engine, url=settings.rabbitmq_url, exchange=settings.events_exchange,
                  name="oih-secrets-relay")
    consumer = Consumer(engine, settings.event_consumer, url=settings.rabbitmq_url,
                        exchange=settings.events_exchange)
    events.register(consumer)
    service = server.Service(
        name="secrets",
        registrations=[lambda s: secrets_pb2_grpc.add_SecretServiceServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
        verifier=identity.verifier if identity else verifier,  # type: ignore[arg-type]
        on_stop=[consumer.stop, relay.stop],
    )
    if identity is not None:
        service.on_stop.append(identity.feed.stop)
    return Built(service, engine, secrets, servicer, relay, consumer, identity)
