"""The default local layout of the gateway: where Envoy listens and where each service runs.

`python -m oih_gateway render` renders `gateway/envoy.yaml` from these values; other code (the
one-command launcher, tests) imports them instead of repeating the numbers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from oih_runtime.settings import DEFAULT_AUDIENCE, DEFAULT_ISSUER, DEFAULT_PORTS

#: Repository root (services/oih_gateway/layout.py → ../..).
ROOT = Path(__file__).resolve().parent.parent.parent
#: The descriptor set the transcoder loads, written by scripts/generate.py.
DESCRIPTOR_SET = ROOT / "generated" / "descriptor_set.binpb"
#: How the committed config names the descriptor set: relative to the repository root, where
#: Envoy runs for it, so the file is the same in every clone.
DESCRIPTOR_SET_RELATIVE = "generated/descriptor_set.binpb"
#: The rendered, committed gateway config.
ENVOY_CONFIG = ROOT / "gateway" / "envoy.yaml"
#: The rendered, committed OpenAPI document of the REST surface.
OPENAPI = ROOT / "gateway" / "openapi.json"
#: Where the committed config expects the API docs files (`oih_gateway.docs.write_docs`),
#: relative to the repository root like the descriptor set: the default data folder, where
#: `oih up` and `python -m oih_gateway render` write them.
DOCS_DIR_RELATIVE = "var/api-docs"

LISTEN_HOST = "0.0.0.0"
LISTEN_PORT = 8080
ADMIN_PORT = 9901
ISSUER = DEFAULT_ISSUER
AUDIENCE = DEFAULT_AUDIENCE
SERVICE_HOST = "127.0.0.1"

#: gRPC port of each service, by proto package (every service of the package runs there).
PACKAGE_PORTS: dict[str, int] = {f"oih.{name}": port for name, port in DEFAULT_PORTS.items()}


def package_of(service_full_name: str) -> str:
    """`oih.iam.v1.IamService` → `oih.iam` (the package without its version)."""
    parts = service_full_name.split(".")
    if len(parts) < 3 or parts[0] != "oih":
        raise ValueError(f"not an oih service: {service_full_name!r}")
    return ".".join(parts[:2])


def default_upstreams(services: list[str], host: str = SERVICE_HOST) -> dict[str, str]:
    """Map each service full name to `host:port` of its package's default port.

    Services of a package without a default port are left out (the renderer then skips them).
    """
    upstreams = {}
    for service in services:
        port = PACKAGE_PORTS.get(package_of(service))
        if port is not None:
            upstreams[service] = f"{host}:{port}"
    return upstreams


def request_limits(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """The body limits a launched gateway uses (`render_envoy_config` options), from
    `OIH_GATEWAY_MAX_REQUEST_BYTES` (default 1 MiB) and `OIH_GATEWAY_LARGE_REQUEST_BYTES`
    (default 10 MiB, for `:execute`, StartExecution and webhooks): bytes of JSON per request.
    The committed gateway/envoy.yaml always has the defaults."""
    env = os.environ if env is None else env
    names = {"max_request_bytes": "OIH_GATEWAY_MAX_REQUEST_BYTES",
             "large_request_bytes": "OIH_GATEWAY_LARGE_REQUEST_BYTES"}
    return {option: int(env[name]) for option, name in names.items() if env.get(name)}
