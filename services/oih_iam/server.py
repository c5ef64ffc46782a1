"""Wires IAM: database, keys, logic, servicer, and the shared server bootstrap."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import timedelta

from oih.iam.v1 import iam_pb2, iam_pb2_grpc
from oih_iam import models
from oih_iam.keys import KeyStore
from oih_iam.logic import Iam
from oih_iam.servicer import IamServicer
from oih_iam.settings import IamSettings
from oih_iam.tokens import TokenIssuer
from oih_runtime import crypto, server
from oih_runtime.bus import Relay
from oih_runtime.bus.models import TABLES as BUS_TABLES
from oih_runtime.db import make_engine
from oih_runtime.revocation import RevocationList
from oih_runtime.revocation_feed import RevocationFeed
from oih_runtime.settings import ServiceSettings
from oih_runtime.tokens import KeyCache, TokenVerifier

log = logging.getLogger(__name__)

SERVICE_NAME = iam_pb2.DESCRIPTOR.services_by_name["IamService"].full_name


@dataclass
class Built:
    service: server.Service
    iam: Iam
    servicer: IamServicer
    relay: Relay
    feed: RevocationFeed

    def start_background(self) -> None:
        """Relay IAM's events and follow revocations made by other IAM replicas."""
        self.relay.start()
        self.feed.start()


def build(settings: ServiceSettings, iam_settings: IamSettings,
          keyring: crypto.Keyring | None = None) -> Built:
    """Without a master key (`OIH_IAM_MASTER_KEY_FILE` / `OIH_IAM_MASTER_KEY`) it refuses to
    build: the signing keys are stored sealed by it."""
    keyring = keyring or crypto.Keyring.from_env("iam")
    engine = make_engine(settings.database_url, tables=(*models.TABLES, *BUS_TABLES))
    keys = KeyStore(engine, iam_settings.token_lifetime, keyring,
                    announce=timedelta(seconds=iam_settings.key_announce_seconds))
    revocations = RevocationList()
    # IAM verifies tokens against its own keys, without a network hop.
    verifier = TokenVerifier(KeyCache(keys.jwks, max_age=60.0, min_refresh=0.0), issuer=settings.jwt_issuer,
                             audience=settings.jwt_audience, revocations=revocations)
    issuer = TokenIssuer(keys, settings.jwt_issuer, settings.jwt_audience,
                         int(iam_settings.token_lifetime.total_seconds()))
    iam = Iam(engine, iam_settings, issuer, revocations)
    generated = iam.bootstrap(settings.client_id, settings.client_secret)
    if generated:
        # Shown once, on the console of whoever started the platform; never logged to files.
        print(
            f"\n  First start: platform administrator {iam_settings.admin_username!r} created"
            f" with password: {generated}\n  (set OIH_IAM_ADMIN_PASSWORD to choose it)\n",
            file=sys.stderr, flush=True,
        )
    servicer = IamServicer(iam, keys, verifier)
    relay = Relay(engine, url=settings.rabbitmq_url, exchange=settings.events_exchange,
                  name="oih-iam-relay")
    feed = RevocationFeed(revocations, iam.sessions.list_revocations, settings.rabbitmq_url,
                          settings.events_exchange, name="oih-iam-revocations")
    service = server.Service(
        name="iam",
        registrations=[lambda s: iam_pb2_grpc.add_IamServiceServicer_to_server(servicer, s)],
        service_names=[SERVICE_NAME],
        verifier=verifier,
        on_stop=[feed.stop, relay.stop],
    )
    return Built(service, iam, servicer, relay, feed)
