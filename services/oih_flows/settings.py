"""The Flow Repository's own settings (`OIH_FLOWS_*`), beside the shared ones."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from oih_runtime.settings import DEFAULT_PORTS


@dataclass(frozen=True)
class FlowsSettings:
    #: How long a flow may stay STARTING or STOPPING before it is moved to FAILED. Long enough
    #: for the orchestrator to pull images and create queues; short enough that a lost event
    #: does not leave a flow hanging (OIH #486, #926, #1088).
    transition_timeout: timedelta
    #: How often the sweeper looks for flows stuck in a transition.
    sweep_interval: float
    #: The Component Repository, asked whether a node's component and function exist.
    components_address: str
    #: The Secrets service, asked whether the secrets a flow names exist in its tenant.
    secrets_address: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FlowsSettings:
        env = os.environ if env is None else env
        return cls(
            transition_timeout=timedelta(
                seconds=float(env.get("OIH_FLOWS_TRANSITION_TIMEOUT_SECONDS", "120"))),
            sweep_interval=float(env.get("OIH_FLOWS_SWEEP_INTERVAL_SECONDS", "10")),
            components_address=env.get(
                "OIH_COMPONENTS_ADDRESS", f"127.0.0.1:{DEFAULT_PORTS['components']}"),
            secrets_address=env.get(
                "OIH_SECRETS_ADDRESS", f"127.0.0.1:{DEFAULT_PORTS['secrets']}"),
        )
