"""The Webhooks service's own settings (`OIH_WEBHOOKS_*`), beside the shared ones."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from oih_runtime.settings import DEFAULT_PORTS

#: When a flow sets no `max_queued_messages`.
DEFAULT_MAX_QUEUED = 10_000


@dataclass(frozen=True)
class WebhooksSettings:
    #: The Flow Repository, asked for a flow's state, tenant and webhook settings.
    flows_address: str
    #: The orchestrator, whose StartExecution runs the flow.
    orchestrator_address: str
    #: The Secrets service, which resolves HMAC keys.
    secrets_address: str
    #: How long an unknown or inactive flow waits before its 404 (slows down probing).
    not_found_delay: float = 1.0
    #: How long a looked-up flow is reused (a stopped flow is refused by the orchestrator
    #: anyway; settings of a running flow cannot change).
    flow_cache_seconds: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhooksSettings:
        env = os.environ if env is None else env

        def address(service: str) -> str:
            return env.get(f"OIH_{service.upper()}_ADDRESS",
                           f"127.0.0.1:{DEFAULT_PORTS[service]}")

        return cls(
            flows_address=address("flows"),
            orchestrator_address=address("orchestrator"),
            secrets_address=address("secrets"),
            not_found_delay=float(env.get("OIH_WEBHOOKS_NOT_FOUND_DELAY_SECONDS", "1")),
            flow_cache_seconds=float(env.get("OIH_WEBHOOKS_FLOW_CACHE_SECONDS", "2")),
        )
