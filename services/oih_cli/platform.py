"""Run the whole mesh on one machine: RabbitMQ (the configured one, or a private node), every
implemented service as a child process, and Envoy in front of them.

Used by `oih up` and by the end-to-end tests, so both run the platform the same way.
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oih_gateway import layout
from oih_gateway.envoy import EnvoyProcess
from oih_gateway.render import read_rpcs, write_envoy_config
from oih_orchestrator.local import stop_all_workers
from oih_runtime import broker, crypto
from oih_runtime.settings import DEFAULT_PORTS, DEFAULT_RABBITMQ_URL

log = logging.getLogger(__name__)

#: Every service of the platform, in start order (IAM first: the others need its keys).
ALL_SERVICES = ["iam", "components", "secrets", "flows", "orchestrator", "scheduler",
                "webhooks", "snapshots"]
#: Services that store something sealed by a master key of their own (`oih_runtime.crypto`).
MASTER_KEY_SERVICES = ("iam", "secrets")
#: Services that use RabbitMQ (all but IAM need it for events; IAM emits revocations too).
INTERNAL_CLIENT_ID = "oih-platform"


def write_private(path: Path, text: str) -> None:
    """Create a file only our user can read, with no moment in which others could."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def implemented_services() -> list[str]:
    """The services whose package exists in this build (the road adds them one by one)."""
    return [s for s in ALL_SERVICES if _runnable(f"oih_{s}")]


def _runnable(package: str) -> bool:
    if importlib.util.find_spec(package) is None:
        return False
    return importlib.util.find_spec(f"{package}.__main__") is not None


class PlatformError(RuntimeError):
    """A part of the platform did not start; the message says which and shows its log."""


@dataclass
class Platform:
    data_dir: Path
    gateway_port: int = layout.LISTEN_PORT
    admin_port: int = layout.ADMIN_PORT
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    services: list[str] = field(default_factory=implemented_services)
    rabbitmq_url: str = field(
        default_factory=lambda: os.environ.get("OIH_RABBITMQ_URL", DEFAULT_RABBITMQ_URL))
    #: RabbitMQ's management API (the orchestrator creates a broker user per flow step there).
    management_url: str = field(
        default_factory=lambda: os.environ.get("OIH_RABBITMQ_MANAGEMENT_URL", ""))
    extra_env: dict[str, str] = field(default_factory=dict)
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    envoy: EnvoyProcess | None = field(default=None, init=False)
    private_broker: broker.PrivateBroker | None = field(default=None, init=False)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def address(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        try:
            self._start_broker()
            env = self._environment()
            for service in self.services:
                self._start_service(service, env)
                self._wait_healthy(service)
            self._start_envoy()
        except BaseException:
            self.stop()
            raise

    def _start_broker(self) -> None:
        if broker.broker_answers(self.rabbitmq_url) and (
            "orchestrator" not in self.services or self._management_answers()
        ):
            return
        private = broker.PrivateBroker(self.data_dir / "rabbitmq")
        log.warning("no RabbitMQ with the management plugin at the configured URL; "
                    "starting a private node")
        try:
            private.start()
        except broker.BrokerError as error:
            raise PlatformError(
                f"RabbitMQ is not reachable and no private node could start: {error}\n"
                f"Either start RabbitMQ and set OIH_RABBITMQ_URL, or {broker.INSTALL_HINT}."
            ) from error
        self.private_broker = private
        self.rabbitmq_url = private.url
        self.management_url = private.management_url

    def _management_answers(self) -> bool:
        """Whether the management API beside the broker answers (with the AMQP credentials)."""
        parsed = urllib.parse.urlparse(self.rabbitmq_url)
        url = self.management_url or f"http://{parsed.hostname}:15672/"
        request = urllib.request.Request(urllib.parse.urljoin(url, "api/overview"))  # noqa: S310
        token = base64.b64encode(
            f"{parsed.username or 'guest'}:{parsed.password or 'guest'}".encode()).decode()
        request.add_header("authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=3) as reply:  # noqa: S310
                return bool(reply.status == 200)
        except OSError:
            return False

    def _internal_secret(self) -> str:
        """The platform services' own client secret, made once per data directory."""
        path = self.data_dir / "internal-client-secret"
        if not path.exists():
            write_private(path, secrets.token_urlsafe(32))
        return path.read_text().strip()

    def _master_key_file(self, service: str) -> Path:
        """The service's master keyring, made once per data directory (mode 0600). Losing it
        loses what it sealed: back it up apart from the databases."""
        path = self.data_dir / f"{service}-master-key"
        if not path.exists():
            write_private(path, crypto.new_master_key_line() + "\n")
        return path

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for service in MASTER_KEY_SERVICES:
            variable = f"OIH_{service.upper()}_MASTER_KEY"
            if service in self.services and not (env.get(variable + "_FILE")
                                                 or env.get(variable)):
                env[variable + "_FILE"] = str(self._master_key_file(service))
        env.update({
            "OIH_DATA_DIR": str(self.data_dir),
            "OIH_RABBITMQ_URL": self.rabbitmq_url,
            **({"OIH_RABBITMQ_MANAGEMENT_URL": self.management_url} if self.management_url else {}),
            "OIH_IAM_ADDRESS": self.address("iam"),
            "OIH_SERVICE_CLIENT_ID": INTERNAL_CLIENT_ID,
            "OIH_SERVICE_CLIENT_SECRET": self._internal_secret(),
            "PYTHONUNBUFFERED": "1",
        })
        for service, port in self.ports.items():
            env[f"OIH_{service.upper()}_PORT"] = str(port)
            env[f"OIH_{service.upper()}_ADDRESS"] = self.address(service)
        if "snapshots" not in self.services:  # else workers start from their last snapshot
            env.pop("OIH_SNAPSHOTS_ADDRESS", None)
        env.update(self.extra_env)
        return env

    def _start_service(self, service: str, env: dict[str, str]) -> None:
        with open(self.log_dir / f"{service}.log", "ab") as output:
            self.children[service] = subprocess.Popen(
                [sys.executable, "-m", f"oih_{service}"], env=env, stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT,
            )

    def kill(self, service: str) -> None:
        """SIGKILL a service process (what a crash looks like); its children keep running."""
        child = self.children.pop(service)
        child.kill()
        child.wait()

    def restart(self, service: str) -> None:
        """Start a killed or stopped service again and wait until it is healthy."""
        self._start_service(service, self._environment())
        self._wait_healthy(service)

    def log_tail(self, service: str, lines: int = 30) -> str:
        path = self.log_dir / f"{service}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait_healthy(self, service: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address(service)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.children[service].poll() is not None:
                    raise PlatformError(f"{service} exited at start:\n{self.log_tail(service)}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise PlatformError(f"{service} not healthy after {timeout}s:\n"
                                        f"{self.log_tail(service)}")
                time.sleep(0.1)

    def _start_envoy(self) -> None:
        descriptor_set = layout.DESCRIPTOR_SET.read_bytes()
        services = sorted({rpc.service for rpc in read_rpcs(descriptor_set)})
        upstreams = {
            name: self.address(layout.package_of(name).removeprefix("oih."))
            for name in services
            if layout.package_of(name).removeprefix("oih.") in self.ports
        }
        config = self.data_dir / "envoy.yaml"
        write_envoy_config(
            config, descriptor_set, upstreams, listen_host="127.0.0.1",
            listen_port=self.gateway_port, admin_port=self.admin_port,
            descriptor_path=str(layout.DESCRIPTOR_SET), issuer=layout.ISSUER,
            audience=layout.AUDIENCE,
        )
        self.envoy = EnvoyProcess(config, admin_port=self.admin_port,
                                  log_path=self.log_dir / "envoy.log")
        self.envoy.start()
        self.envoy.wait_ready()
        self.envoy.wait_jwks_fetched()

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Envoy first (no new requests), then the services (they drain), then the broker."""
        if self.envoy is not None:
            self.envoy.stop()
            self.envoy = None
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children.values():
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.children.clear()
        stop_all_workers(self.data_dir)
        if self.private_broker is not None:
            self.private_broker.stop()
            self.private_broker = None

    def __enter__(self) -> Platform:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
