"""Render the gateway files of the Kubernetes deployment: `python deploy/render.py [--check]`.

Writes, into `deploy/kubernetes/base/gateway/` (inside the kustomization root, where kustomize's
`configMapGenerator` may read them):

- `envoy.yaml`: the Envoy config rendered from the descriptor set by the same renderer as
  `gateway/envoy.yaml` (`oih_gateway.render`), but for the cluster layout: each service's
  upstream is its Kubernetes Service (`oih-iam:50051`, ...), and the descriptor set is named
  relative to Envoy's working directory (`/etc/oih-gateway` in the pod, where both files are
  mounted from one ConfigMap).
- `descriptor_set.binpb`: a copy of `generated/descriptor_set.binpb` (kustomize refuses files
  outside the kustomization root, and a symlink would not survive every checkout).

`--check` writes nothing and exits 1 when either file is stale (the deploy tests do the same).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from oih_gateway import layout
from oih_gateway.render import dumps_envoy_config, read_rpcs, render_envoy_config
from oih_runtime.settings import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_DIR = ROOT / "deploy" / "kubernetes" / "base" / "gateway"
ENVOY_CONFIG = GATEWAY_DIR / "envoy.yaml"
DESCRIPTOR_COPY = GATEWAY_DIR / "descriptor_set.binpb"
SOURCE_DESCRIPTOR = ROOT / "generated" / "descriptor_set.binpb"

#: Where the ConfigMap is mounted in the Envoy pod; also the container's working directory, so
#: the relative descriptor path below resolves there (and, for `envoy --mode validate`, in
#: GATEWAY_DIR).
MOUNT_DIR = "/etc/oih-gateway"
DESCRIPTOR_PATH = "descriptor_set.binpb"
#: The Kubernetes namespace of the platform services (the worker namespace is separate).
NAMESPACE = "oih"


def service_name(package_key: str) -> str:
    """The Kubernetes Service of a platform service: `iam` → `oih-iam`."""
    return f"oih-{package_key}"


def cluster_upstreams(descriptor_set: bytes) -> dict[str, str]:
    """Each gRPC service of the contract → `oih-<package>:<default port>`.

    Like the local layout, every package with a default port gets an upstream, also those whose
    service is only a contract so far (scheduler, webhooks, snapshots): their Service does not
    exist, Envoy's DNS lookup finds no host, and their routes answer 503 as JSON, as locally.
    """
    upstreams: dict[str, str] = {}
    for service in sorted({rpc.service for rpc in read_rpcs(descriptor_set)}):
        key = layout.package_of(service).removeprefix("oih.")
        if key in DEFAULT_PORTS:
            upstreams[service] = f"{service_name(key)}:{DEFAULT_PORTS[key]}"
    return upstreams


def render_cluster_config(descriptor_set: bytes) -> dict[str, Any]:
    """The Envoy config of the cluster layout, as a dict."""
    return render_envoy_config(
        descriptor_set,
        cluster_upstreams(descriptor_set),
        listen_host=layout.LISTEN_HOST,
        listen_port=layout.LISTEN_PORT,
        # The admin interface stays on loopback: it can stop Envoy. Probes use the listener.
        admin_host="127.0.0.1",
        admin_port=layout.ADMIN_PORT,
        descriptor_path=DESCRIPTOR_PATH,
        issuer=layout.ISSUER,
        audience=layout.AUDIENCE,
    )


def rendered() -> dict[Path, bytes]:
    """What the files under GATEWAY_DIR must contain, by path."""
    descriptor_set = SOURCE_DESCRIPTOR.read_bytes()
    config = dumps_envoy_config(render_cluster_config(descriptor_set))
    config = config.replace(
        "Rendered by `python -m oih_gateway render`", "Rendered by `python deploy/render.py`", 1)
    return {ENVOY_CONFIG: config.encode(), DESCRIPTOR_COPY: descriptor_set}


def stale() -> list[Path]:
    """The rendered files whose committed content differs from a fresh render."""
    return [path for path, content in rendered().items()
            if not path.exists() or path.read_bytes() != content]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/render.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a rendered file is stale")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale()
        for path in outdated:
            print(f"stale: {path.relative_to(ROOT)} (run `python deploy/render.py`)",
                  file=sys.stderr)
        return 1 if outdated else 0
    GATEWAY_DIR.mkdir(parents=True, exist_ok=True)
    for path, content in rendered().items():
        path.write_bytes(content)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
