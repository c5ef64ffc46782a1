"""The orchestrator's own settings (`OIH_ORCHESTRATOR_*` and a few platform-wide ones)."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from oih_runtime.settings import DEFAULT_PORTS

MANAGEMENT_PORT = 15672


def management_url_for(amqp_url: str) -> str:
    """The management API beside an AMQP broker: same host and credentials, port 15672."""
    parsed = urllib.parse.urlparse(amqp_url)
    credentials = ""
    if parsed.username:
        credentials = parsed.username + (f":{parsed.password}" if parsed.password else "") + "@"
    return f"http://{credentials}{parsed.hostname or '127.0.0.1'}:{MANAGEMENT_PORT}/"


@dataclass(frozen=True)
class OrchestratorSettings:
    #: The Component Repository, asked for each node's component (with the service token).
    components_address: str
    #: RabbitMQ's management HTTP API (users, permissions, unacked counts). Credentials may be
    #: in the URL; without them the AMQP URL's are used.
    management_url: str
    #: The AMQP URL workers connect to (host as seen from a worker; credentials are replaced by
    #: the step's own broker user). Empty: the orchestrator's own URL.
    worker_amqp_url: str
    #: "local" (child processes) or "kubernetes".
    driver: str
    #: The namespace of the kubernetes driver's Deployments (empty: the driver's default).
    kubernetes_namespace: str
    #: How often every ACTIVE deployment is checked against what really runs.
    reconcile_seconds: float
    #: How long a start may wait for every step's worker to consume its queue.
    start_timeout: float
    #: Whether to register the built-in components in the Component Repository at start.
    register_builtins: bool
    #: The platform image (deploy/Dockerfile: oih_worker and oih_builtins) in which the
    #: kubernetes driver runs components that are Python entry points, such as the built-ins.
    #: Empty: the kubernetes driver refuses them (the local driver ignores it).
    python_image: str = ""
    #: The Snapshots service, asked for the steps' last snapshots at every deployment (see
    #: oih_orchestrator.snapshots). Empty (the default, unlike the other addresses): workers
    #: start with empty snapshots.
    snapshots_address: str = ""
    #: The Secrets service, which resolves each step's credentials at deploy (service token).
    secrets_address: str = f"127.0.0.1:{DEFAULT_PORTS['secrets']}"
    #: `OIH_EGRESS_ALLOWED_NETWORKS` (see oih_sdk.egress), handed on to the kubernetes driver's
    #: workers (local workers inherit the orchestrator's environment).
    egress_allowed_networks: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 amqp_url: str = "") -> OrchestratorSettings:
        env = os.environ if env is None else env
        amqp_url = amqp_url or env.get("OIH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
        return cls(
            components_address=env.get(
                "OIH_COMPONENTS_ADDRESS", f"127.0.0.1:{DEFAULT_PORTS['components']}"),
            management_url=env.get("OIH_RABBITMQ_MANAGEMENT_URL") or management_url_for(amqp_url),
            worker_amqp_url=env.get("OIH_ORCHESTRATOR_WORKER_AMQP_URL", ""),
            driver=env.get("OIH_ORCHESTRATOR_DRIVER", "local"),
            kubernetes_namespace=env.get("OIH_ORCHESTRATOR_KUBERNETES_NAMESPACE", ""),
            reconcile_seconds=float(env.get("OIH_ORCHESTRATOR_RECONCILE_SECONDS", "10")),
            start_timeout=float(env.get("OIH_ORCHESTRATOR_START_TIMEOUT_SECONDS", "60")),
            register_builtins=env.get("OIH_ORCHESTRATOR_REGISTER_BUILTINS", "true").lower()
            not in ("0", "false", "no"),
            python_image=env.get("OIH_ORCHESTRATOR_PYTHON_IMAGE", ""),
            snapshots_address=env.get("OIH_SNAPSHOTS_ADDRESS", ""),
            secrets_address=env.get(
                "OIH_SECRETS_ADDRESS", f"127.0.0.1:{DEFAULT_PORTS['secrets']}"),
            egress_allowed_networks=env.get("OIH_EGRESS_ALLOWED_NETWORKS", ""),
        )
