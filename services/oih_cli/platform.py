"""Run the whole mesh on one machine: RabbitMQ (the configured one, or a private node), every
implemented service as a child process, and Envoy in front of them.

Used by `oih up` and by the end-to-end tests, so both run the platform the same way.

- Every port is checked before anything starts: a port another process listens on (another
  platform, say) stops the start with a message naming the port and its setting, and a
  service counts as healthy only when the answer comes from the process this platform started.
- A supervisor thread restarts a service that exits (a crash, a SIGKILL) with back-off (1 s
  doubling to 30 s; a service that ran a minute starts over at 1 s), logged in the service's
  log and in `oih up`'s own; it never gives up, as a platform must not stay down.
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oih_cli import broker
from oih_gateway import layout
from oih_gateway.docs import write_docs
from oih_gateway.envoy import EnvoyProcess
from oih_gateway.openapi import dumps_openapi, render_openapi
from oih_gateway.render import read_rpcs, write_envoy_config
from oih_orchestrator.drivers.local import stop_all_workers
from oih_runtime import crypto
from oih_runtime.background import Periodic
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


#: Supervisor back-off: the first restart after this many seconds, doubling up to the last.
RESTART_INITIAL, RESTART_MAX = 1.0, 30.0
#: A service that ran this long before it exited restarts after RESTART_INITIAL again.
STABLE_AFTER = 60.0


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a process listens on host:port (SO_REUSEADDR: a port in TIME_WAIT is free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` itself has a listening socket on `port`."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               for c in connections)


@dataclass
class _Supervised:
    """Restart bookkeeping of one service."""

    started: float = 0.0  # monotonic time of the current process's start
    crashes: int = 0  # consecutive short runs
    restart_at: float | None = None  # set while waiting to restart


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
    #: Ports of further replicas of a service (stateless ones: iam, components, flows), e.g.
    #: `{"flows": [50063]}`: instance `flows-2` listens there, and Envoy balances over all.
    replicas: dict[str, list[int]] = field(default_factory=dict)
    #: Restart services that exit (see the module docstring).
    supervise: bool = True
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    #: How many times the supervisor restarted each service.
    restarts: dict[str, int] = field(default_factory=dict, init=False)
    _supervised: dict[str, _Supervised] = field(default_factory=dict, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False)
    _supervisor: Periodic | None = field(default=None, init=False)
    envoy: EnvoyProcess | None = field(default=None, init=False)
    private_broker: broker.PrivateBroker | None = field(default=None, init=False)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def address(self, service: str) -> str:
        """Where a service (its first replica) or an instance (`flows-2`) listens."""
        return f"127.0.0.1:{self._port(service)}"

    def instances(self, service: str) -> list[str]:
        """The instances of a service: `flows`, then `flows-2`, `flows-3`… for its replicas."""
        return [service, *(f"{service}-{n}" for n in range(2, len(self.replicas.get(service,
                                                                                      [])) + 2))]

    def _port(self, instance: str) -> int:
        service, _, number = instance.partition("-")
        return self.ports[service] if not number else self.replicas[service][int(number) - 2]

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self._check_ports()
        try:
            self._start_broker()
            env = self.environment()
            for service in self.services:
                for instance in self.instances(service):
                    self._start_service(instance, env)
                    self._wait_healthy(instance)
            self._start_envoy()
        except BaseException:
            self.stop()
            raise
        if self.supervise:
            self._stopping.clear()
            self._supervisor = Periodic(self._supervise_once, 0.25, "oih-up-supervisor",
                                        at_once=False, stop_timeout=5.0)
            self._supervisor.start()

    def _check_ports(self) -> None:
        wanted = {f"OIH_{s.upper()}_PORT": self.ports[s] for s in self.services}
        wanted.update({f"replica {n + 2} of {s}": port for s, ports in self.replicas.items()
                       for n, port in enumerate(ports)})
        wanted["OIH_GATEWAY_PORT"] = self.gateway_port
        wanted["OIH_GATEWAY_ADMIN_PORT"] = self.admin_port
        taken = [f"{port} ({setting})" for setting, port in wanted.items() if port_taken(port)]
        if taken:
            raise PlatformError(
                f"port{'s' if len(taken) > 1 else ''} already in use: {', '.join(taken)}. "
                "Another platform (or another program) listens there: stop it, or choose "
                "other ports with the settings named.")

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

    def environment(self) -> dict[str, str]:
        """The environment every service process gets (tests use it to run one in-process)."""
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

    def _start_service(self, instance: str, env: dict[str, str]) -> None:
        service = instance.partition("-")[0]
        if instance != service:  # a further replica: its own port, no second metrics server
            env = {**env, f"OIH_{service.upper()}_PORT": str(self._port(instance)),
                   f"OIH_{service.upper()}_METRICS_PORT": "0"}
        with self._lock, open(self.log_dir / f"{instance}.log", "ab") as output:
            self.children[instance] = subprocess.Popen(
                [sys.executable, "-m", f"oih_{service}"], env=env, stdin=subprocess.DEVNULL,
                stdout=output, stderr=subprocess.STDOUT,
            )
            state = self._supervised.setdefault(instance, _Supervised())
            state.started, state.restart_at = time.monotonic(), None

    def roll(self, service: str) -> None:
        """A rolling restart: each instance in turn gets SIGTERM (it drains), is started again
        and waited for until healthy, so the others serve meanwhile."""
        for instance in self.instances(service):
            with self._lock:  # out of the supervisor's sight while it is replaced
                child = self.children.pop(instance)
            child.send_signal(signal.SIGTERM)
            child.wait(60)
            self._start_service(instance, self.environment())
            self._wait_healthy(instance)

    def kill(self, service: str) -> None:
        """SIGKILL a service process and keep it down (the supervisor leaves it alone) until
        `restart`; its children (workers) keep running."""
        with self._lock:
            child = self.children.pop(service)
        child.kill()
        child.wait()

    def restart(self, service: str) -> None:
        """Start a killed or stopped service again and wait until it is healthy."""
        self._start_service(service, self.environment())
        self._wait_healthy(service)

    def wait_restarted(self, service: str, count: int, timeout: float = 60.0) -> None:
        """Wait until the supervisor restarted `service` `count` times in all and it is
        healthy again (for tests that crash a service)."""
        deadline = time.monotonic() + timeout
        while self.restarts.get(service, 0) < count:
            if time.monotonic() > deadline:
                raise PlatformError(f"{service} was not restarted within {timeout}s")
            time.sleep(0.1)
        self._wait_healthy(service, max(deadline - time.monotonic(), 1.0))

    # ------------------------------------------------------------------ supervision

    def _supervise_once(self) -> None:
        now = time.monotonic()
        with self._lock:
            for service, child in list(self.children.items()):
                state = self._supervised[service]
                if state.restart_at is None:
                    code = child.poll()
                    if code is None:
                        continue
                    ran = now - state.started
                    state.crashes = 1 if ran >= STABLE_AFTER else state.crashes + 1
                    delay = min(RESTART_INITIAL * 2 ** (state.crashes - 1), RESTART_MAX)
                    state.restart_at = now + delay
                    self._note(service, f"exited with code {code} after {ran:.0f}s; "
                                        f"restarting in {delay:.0f}s")
                elif now >= state.restart_at and not self._stopping.is_set():
                    self._start_service(service, self.environment())
                    self.restarts[service] = self.restarts.get(service, 0) + 1
                    self._note(service, f"restarted (restart {self.restarts[service]})")

    def _note(self, service: str, what: str) -> None:
        log.warning("%s %s", service, what)
        with open(self.log_dir / f"{service}.log", "a") as output:
            output.write(f"--- oih up: {service} {what} at {datetime.now(UTC).isoformat()}\n")

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
                child = self.children[service]
                if child.poll() is not None:
                    raise PlatformError(f"{service} exited at start:\n{self.log_tail(service)}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    # Only our own child's answer counts, not another program's on the port.
                    if (reply.status == health_pb2.HealthCheckResponse.SERVING
                            and listens_on(child.pid, self._port(service))):
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
        upstreams = {  # every replica's address, joined by commas
            name: ",".join(self.address(instance) for instance in self.instances(service))
            for name in services
            if (service := layout.package_of(name).removeprefix("oih.")) in self.ports
        }
        config = self.data_dir / "envoy.yaml"
        # /openapi.json and /api-docs: Envoy serves these files itself.
        docs_dir = write_docs(self.data_dir / "api-docs",
                              dumps_openapi(render_openapi(descriptor_set)))
        write_envoy_config(
            config, descriptor_set, upstreams, listen_host="127.0.0.1",
            listen_port=self.gateway_port, admin_port=self.admin_port,
            descriptor_path=str(layout.DESCRIPTOR_SET), issuer=layout.ISSUER,
            audience=layout.AUDIENCE, docs_dir=str(docs_dir), **layout.request_limits(),
        )
        self.envoy = EnvoyProcess(config, admin_port=self.admin_port,
                                  log_path=self.log_dir / "envoy.log")
        self.envoy.start()
        self.envoy.wait_ready()
        self.envoy.wait_jwks_fetched()

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Envoy first (no new requests), then the services (they drain), then the broker."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.stop()
            self._supervisor = None
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
