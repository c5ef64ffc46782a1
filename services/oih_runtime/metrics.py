"""Prometheus metrics of a service: RPC counts by status code and RPC latencies.

Each service process serves them on `OIH_<SERVICE>_METRICS_PORT` (`GET /metrics`) when that
variable is set; without it nothing listens (a laptop runs seven services and needs no
scraper). Workers report their message counts through the executions view instead.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RPCS = Counter("oih_rpc_requests", "RPCs handled, by method and gRPC status code",
               ["method", "code"])
RPC_SECONDS = Histogram(
    "oih_rpc_duration_seconds", "Time to handle an RPC, by method", ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def observe(method: str, code: str, seconds: float) -> None:
    RPCS.labels(method=method, code=code).inc()
    RPC_SECONDS.labels(method=method).observe(seconds)


def serve(host: str, port: int) -> int:
    """Serve /metrics on host:port (0 picks a free port); returns the port."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_address[1])
