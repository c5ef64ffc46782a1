"""Server bootstrap shared by every service: thread-pool gRPC server, interceptors,
grpc.health.v1, reflection, and a graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from oih_runtime import metrics
from oih_runtime.interceptors import server_interceptors
from oih_runtime.settings import ServiceSettings
from oih_runtime.tokens import TokenVerifier

log = logging.getLogger(__name__)

#: The largest request a service accepts (gRPC's default is 4 MiB). The gateway lets through up
#: to 10 MiB of JSON on `:execute` and webhooks, whose protobuf may be up to 6 times larger
#: (oih_gateway.render, "Request limits"); tests/gateway/test_request_limits.py checks the two
#: agree.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Registers a servicer on the server, e.g. `lambda s: add_FlowServiceServicer_to_server(x, s)`.
Registration = Callable[[grpc.Server], None]


@dataclass
class Service:
    """What a service brings to the shared bootstrap."""

    name: str
    registrations: Sequence[Registration]
    #: Full names of the gRPC services, for health and reflection.
    service_names: Sequence[str]
    verifier: TokenVerifier
    #: Called on stop, before the server drains (stop consumers, relays, timers).
    on_stop: list[Callable[[], None]] = field(default_factory=list)


class RunningServer:
    def __init__(self, server: grpc.Server, port: int, service: Service, grace: float,
                 drain: float = 0.0) -> None:
        self.server = server
        self.port = port
        self.service = service
        self.grace = grace
        self.drain = drain
        self.health = health.HealthServicer()
        self._stopped = threading.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Report NOT_SERVING and keep serving for `drain` seconds, so that load balancers
        (Envoy's health checks, a Kubernetes readiness probe) send new calls elsewhere; then
        refuse new calls, let in-flight ones finish (up to the grace period), stop."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        draining_until = time.monotonic() + self.drain
        for callback in self.service.on_stop:
            try:
                callback()
            except Exception:
                log.exception("error while stopping %s", self.service.name)
        time.sleep(max(draining_until - time.monotonic(), 0.0))
        self.server.stop(self.grace).wait()
        log.info("stopped", extra={"server": self.service.name})

    def wait(self) -> None:
        self.server.wait_for_termination()


def start(service: Service, *, host: str, port: int, max_workers: int = 16,
          grace: float = 5.0, drain: float = 0.0) -> RunningServer:
    """Start serving `service` on host:port (port 0 picks a free one)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=service.name),
        interceptors=server_interceptors(service.verifier),
        options=[("grpc.so_reuseport", 0),
                 ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
    )
    for register in service.registrations:
        register(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"{service.name}: cannot listen on {host}:{port}")
    running = RunningServer(server, bound, service, grace, drain)
    health_pb2_grpc.add_HealthServicer_to_server(running.health, server)
    for name in [*service.service_names, ""]:
        running.health.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [*service.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    server.start()
    log.info("listening", extra={"server": service.name, "address": f"{host}:{bound}"})
    return running


def serve(config: ServiceSettings, service: Service,
          start_background: Callable[[], None] = lambda: None) -> None:
    """A service's whole life in `python -m oih_<service>`: listen, start its background work
    (event relay, consumers, timers), serve until SIGTERM/SIGINT, stop gracefully."""
    running = start(service, host=config.host, port=config.port,
                    max_workers=config.max_workers, grace=config.grace_seconds,
                    drain=config.drain_seconds)
    if config.metrics_port:
        port = metrics.serve(config.host, config.metrics_port)
        log.info("metrics", extra={"address": f"http://{config.host}:{port}/metrics"})
    start_background()
    run_until_signalled(running)


def run_until_signalled(running: RunningServer) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    done = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        log.info("signal received, stopping", extra={"signal": signal.Signals(signum).name})
        done.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    done.wait()
    running.stop()
