"""Settings from environment variables, with defaults that run the whole mesh on a laptop.

Platform-wide variables start with `OIH_`; a service's own with `OIH_<SERVICE>_` (for example
`OIH_FLOWS_PORT`). `DATABASE_URL` is the fallback database of every service.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: Where each service listens by default (gRPC). The gateway's default layout uses the same map.
DEFAULT_PORTS = {
    "iam": 50051,
    "components": 50052,
    "flows": 50053,
    "orchestrator": 50054,
    "scheduler": 50055,
    "webhooks": 50056,
    "snapshots": 50057,
    "secrets": 50058,
}
DEFAULT_ISSUER = "oih-iam"
DEFAULT_AUDIENCE = "oih-platform"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@dataclass(frozen=True)
class ServiceSettings:
    """What every service needs to know to run."""

    service: str
    host: str
    port: int
    database_url: str
    data_dir: Path
    iam_address: str
    jwt_issuer: str
    jwt_audience: str
    rabbitmq_url: str
    max_workers: int
    log_level: str
    grace_seconds: float
    #: Client credentials of the platform's internal service account, for calls to other services.
    client_id: str
    client_secret: str
    #: Separates platforms sharing one broker (tests, several dev stacks): their event exchange
    #: and event queues get this suffix. Empty in a normal deployment.
    bus_namespace: str = ""
    #: Where Prometheus scrapes `/metrics`; 0: no metrics endpoint.
    metrics_port: int = 0

    @property
    def events_exchange(self) -> str:
        return f"oih.events.{self.bus_namespace}" if self.bus_namespace else "oih.events"

    @property
    def event_consumer(self) -> str:
        """The consumer name of this service on the bus (its queue is `oih.<name>.events`)."""
        return f"{self.bus_namespace}.{self.service}" if self.bus_namespace else self.service

    def own(self, name: str, default: str) -> str:
        """A service-specific variable, `OIH_<SERVICE>_<NAME>`."""
        return os.environ.get(f"OIH_{self.service.upper()}_{name}", default)


def load(service: str, env: Mapping[str, str] | None = None) -> ServiceSettings:
    """Read the settings of `service` (a key of DEFAULT_PORTS) from the environment."""
    env = os.environ if env is None else env
    prefix = f"OIH_{service.upper()}_"
    data_dir = Path(env.get("OIH_DATA_DIR", "var")).resolve()
    database_url = env.get(
        prefix + "DATABASE_URL", env.get("DATABASE_URL", f"sqlite:///{data_dir / service}.db")
    )
    return ServiceSettings(
        service=service,
        host=env.get(prefix + "HOST", "127.0.0.1"),
        port=int(env.get(prefix + "PORT", DEFAULT_PORTS.get(service, 0))),
        database_url=database_url,
        data_dir=data_dir,
        iam_address=env.get("OIH_IAM_ADDRESS", f"127.0.0.1:{DEFAULT_PORTS['iam']}"),
        jwt_issuer=env.get("OIH_JWT_ISSUER", DEFAULT_ISSUER),
        jwt_audience=env.get("OIH_JWT_AUDIENCE", DEFAULT_AUDIENCE),
        rabbitmq_url=env.get("OIH_RABBITMQ_URL", DEFAULT_RABBITMQ_URL),
        max_workers=int(env.get("OIH_MAX_WORKERS", "16")),
        log_level=env.get("OIH_LOG_LEVEL", "INFO"),
        grace_seconds=float(env.get("OIH_GRACE_SECONDS", "5")),
        client_id=env.get("OIH_SERVICE_CLIENT_ID", ""),
        client_secret=env.get("OIH_SERVICE_CLIENT_SECRET", ""),
        bus_namespace=env.get("OIH_BUS_NAMESPACE", ""),
        metrics_port=int(env.get(prefix + "METRICS_PORT", "0")),
    )
