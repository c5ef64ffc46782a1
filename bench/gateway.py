"""The cost of the gateway and of authentication, as ratios to raw gRPC measured in this run.

    python bench/gateway.py [--seconds 5] [--threads 16]

Baseline: a bare grpc.health.v1 Check on the IAM server (no interceptors work: health is open).
Then IAM's GetCurrentPrincipal (token verified, principal loaded from the database) called
directly, through Envoy as native gRPC, and through Envoy as REST (GET /v1/users/me).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import free_port, report, throughput
from oih.iam.v1 import iam_pb2, iam_pb2_grpc
from oih_cli.platform import Platform
from oih_runtime.settings import DEFAULT_PORTS

PASSWORD = "bench-admin-password"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Platform(
        data_dir=Path(tmp), gateway_port=free_port(), admin_port=free_port(),
        ports={name: free_port() for name in DEFAULT_PORTS}, services=["iam"],
        extra_env={"OIH_IAM_ADMIN_PASSWORD": PASSWORD, "OIH_LOG_LEVEL": "WARNING"},
    ) as platform:
        direct = grpc.insecure_channel(platform.address("iam"))
        via_envoy = grpc.insecure_channel(platform.gateway_url.removeprefix("http://"))
        token = iam_pb2_grpc.IamServiceStub(direct).Login(iam_pb2.LoginRequest(
            username="admin@oih.local", password=PASSWORD)).access_token
        metadata = (("authorization", f"Bearer {token}"),)
        health = health_pb2_grpc.HealthStub(direct)
        iam_direct = iam_pb2_grpc.IamServiceStub(direct)
        iam_envoy = iam_pb2_grpc.IamServiceStub(via_envoy)
        rest = httpx.Client(base_url=platform.gateway_url,
                            headers={"authorization": f"Bearer {token}"},
                            limits=httpx.Limits(max_connections=args.threads))
        request = iam_pb2.GetCurrentPrincipalRequest()

        def run(call: object) -> float:
            return throughput(call, threads=args.threads, seconds=args.seconds)  # type: ignore[arg-type]

        baseline = ("raw gRPC (health check)",
                    run(lambda: health.Check(health_pb2.HealthCheckRequest())))
        rows = [
            ("IAM GetCurrentPrincipal, direct gRPC",
             run(lambda: iam_direct.GetCurrentPrincipal(request, metadata=metadata))),
            ("IAM GetCurrentPrincipal, gRPC via Envoy",
             run(lambda: iam_envoy.GetCurrentPrincipal(request, metadata=metadata))),
            ("GET /v1/users/me, REST via Envoy (JWT)",
             run(lambda: rest.get("/v1/users/me").raise_for_status())),
        ]
        report(f"unary calls, {args.threads} threads, {args.seconds:.0f} s each", baseline,
               rows, "calls/s")
        rest.close()
        direct.close()
        via_envoy.close()


if __name__ == "__main__":
    main()
