"""The kubernetes driver's manifests: valid offline (kubernetes-validate --strict), DNS-1123
names for any ids, a hardened pod, and the worker's spec in a Secret. No cluster is needed."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
import yaml

from oih.components.v1 import components_pb2
from oih_orchestrator import drivers
from oih_orchestrator.kubernetes import (
    GRACE_SECONDS,
    KubernetesDriver,
    _pod,
    deployment_name,
    flow_selector,
    label_value,
    manifests,
    secret_name,
    worker_info,
)
from oih_worker.spec import EdgeSpec, StepSpec

DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
Image = components_pb2.ContainerImage


def component(**resources: str) -> components_pb2.Component:
    result = components_pb2.Component(
        name="components/crm", display_name="CRM",
        container_image=Image(image="ghcr.io/acme/crm:1.4.0",
                              image_pull_policy=Image.PULL_POLICY_IF_NOT_PRESENT))
    for key, value in resources.items():
        kind, field = key.split("_")
        setattr(getattr(result.resources, kind), field, value)
    return result


def spec(flow_id: str = "f1", step_id: str = "fetch") -> StepSpec:
    return StepSpec(flow_id=flow_id, step_id=step_id, tenant="tenants/t1",
                    entry_point="crm.component:component", function="fetch",
                    amqp_url="amqp://flow-f1-fetch:s3cret@rabbitmq:5672/%2F",
                    config={"url": "https://crm.example.com"}, edges=[EdgeSpec("store")])


CREDENTIALS = b'{"api_key": "sk-live-do-not-show-0123456789"}'


def sample_flow() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for step_id in ("fetch", "Transform_2", "store"):
        documents += manifests(spec("My_Flow-01", step_id), component(limits_memory="1Gi"),
                               namespace="flows",
                               credentials=CREDENTIALS if step_id == "fetch" else None)
    return documents


def test_sample_flow_validates_strictly_with_the_python_api() -> None:
    for document in sample_flow():
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(),
                                     strict=True)


def test_sample_flow_validates_strictly_with_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump_all(sample_flow()))
    cli = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run([str(cli), "--strict", "--quiet", str(path)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_unknown_field_would_fail_strict_validation() -> None:
    """Guards the test above: strict validation really rejects what Kubernetes would."""
    deployment = manifests(spec(), component())[1]
    deployment["spec"]["template"]["spec"]["containers"][0]["bogus"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(),
                                     strict=True)


@pytest.mark.parametrize(("flow_id", "step_id"), [
    ("f1", "fetch"), ("My_Flow", "Step_1"), ("-leading-dash", "_under_"), ("x" * 63, "y" * 30),
    ("UPPER", "a--b"), ("___", "---"),
])
def test_names_are_dns_1123_labels_for_any_ids(flow_id: str, step_id: str) -> None:
    name = deployment_name(flow_id, step_id)
    assert DNS_1123_LABEL.match(name) and len(name) <= 63, name
    assert DNS_1123_LABEL.match(secret_name(flow_id, step_id))
    assert len(secret_name(flow_id, step_id)) <= 63
    secret, deployment = manifests(spec(flow_id, step_id), component())
    for document in (secret, deployment):
        for value in document["metadata"]["labels"].values():
            assert LABEL_VALUE.match(value) and len(value) <= 63, value
    assert deployment["metadata"]["annotations"]["oih.flow"] == flow_id
    assert deployment["metadata"]["annotations"]["oih.step"] == step_id


def test_names_of_different_ids_never_collide() -> None:
    names = {deployment_name("a-b", "c"), deployment_name("a", "b-c"),
             deployment_name("My_Flow", "s"), deployment_name("my-flow", "s")}
    assert len(names) == 4
    assert deployment_name("f1", "fetch").startswith("flow-f1-fetch-")


def test_label_values_are_exact_when_possible() -> None:
    assert label_value("f1") == "f1"
    assert label_value("tenants/t1") != "tenants/t1"
    assert LABEL_VALUE.match(label_value("-x-"))
    assert flow_selector("f1") == "app.kubernetes.io/managed-by=oih-orchestrator,oih.flow=f1"


def test_the_pod_is_hardened() -> None:
    deployment = manifests(spec(), component())[1]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] == GRACE_SECONDS >= 30
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])


def test_the_container_runs_the_worker_from_the_components_image() -> None:
    secret, deployment = manifests(spec(), component(requests_cpu="500m", limits_memory="1Gi"),
                                   namespace="tenant-a")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/acme/crm:1.4.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == ["python", "-m", "oih_worker"]
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "128Mi"},
                                      "limits": {"cpu": "250m", "memory": "1Gi"}}
    assert deployment["metadata"]["namespace"] == secret["metadata"]["namespace"] == "tenant-a"
    labels = deployment["metadata"]["labels"]
    assert (labels["oih.flow"], labels["oih.step"], labels["oih.tenant"]) == ("f1", "fetch", "t1")
    assert labels["app.kubernetes.io/managed-by"] == "oih-orchestrator"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_default_pull_policy_is_always_and_resources_default() -> None:
    bare = components_pb2.Component(container_image=Image(image="busybox:1"))
    container = manifests(spec(), bare)[1]["spec"]["template"]["spec"]["containers"][0]
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"cpu": "250m", "memory": "256Mi"}}


def test_workers_get_the_egress_allow_list_only_when_one_is_set() -> None:
    def env(**kwargs: str) -> dict[str, str]:
        container = manifests(spec(), component(), **kwargs)[1]["spec"]["template"]["spec"][
            "containers"][0]
        return {e["name"]: e["value"] for e in container["env"]}

    assert "OIH_EGRESS_ALLOWED_NETWORKS" not in env()
    assert env(egress_allowed_networks="10.9.0.0/16")["OIH_EGRESS_ALLOWED_NETWORKS"] == \
        "10.9.0.0/16"


def test_the_secret_holds_the_spec_with_its_broker_credentials() -> None:
    secret = manifests(spec(), component())[0]
    assert secret["kind"] == "Secret" and secret["type"] == "Opaque"
    restored = StepSpec.from_json(secret["stringData"]["OIH_WORKER_SPEC"])
    assert restored == spec()
    assert "s3cret" in restored.amqp_url


def test_a_changed_spec_changes_the_pod_template() -> None:
    """Replacing only the Secret would not restart the pods."""
    before = manifests(spec(), component())[1]["spec"]["template"]["metadata"]
    changed = spec()
    changed.config = {"url": "https://other.example.com"}
    after = manifests(changed, component())[1]["spec"]["template"]["metadata"]
    assert before["annotations"]["oih.spec-hash"] != after["annotations"]["oih.spec-hash"]


def python_component() -> components_pb2.Component:
    """Like the built-ins: a Python entry point, no image."""
    return components_pb2.Component(
        name="components/sink", display_name="sink",
        python_entry_point=components_pb2.PythonEntryPoint(
            object_reference="oih_builtins.sink:component"))


def test_a_python_only_component_is_refused_without_the_python_image() -> None:
    with pytest.raises(ValueError, match="OIH_ORCHESTRATOR_PYTHON_IMAGE"):
        manifests(spec(), python_component())
    driver = KubernetesDriver(namespace="flows", api_client=object())
    assert "OIH_ORCHESTRATOR_PYTHON_IMAGE" in driver.refusal(python_component())
    assert driver.refusal(component()) == ""
    assert "neither" in driver.refusal(components_pb2.Component(name="components/empty"))


def python_step() -> StepSpec:
    step = spec(step_id="store")
    step.entry_point, step.function = "oih_builtins.sink:component", "sink"
    return step


def test_a_python_entry_point_runs_in_the_platform_image() -> None:
    driver = KubernetesDriver(namespace="flows", api_client=object(),
                              python_image="registry.example.com/oih:0.1.0")
    assert driver.refusal(python_component()) == ""
    secret, deployment = manifests(python_step(), python_component(), namespace="flows",
                                   python_image="registry.example.com/oih:0.1.0")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.com/oih:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == ["python", "-m", "oih_worker"]
    # The worker learns the entry point from its spec, in the Secret.
    restored = StepSpec.from_json(secret["stringData"]["OIH_WORKER_SPEC"])
    assert restored.entry_point == "oih_builtins.sink:component"
    for document in (secret, deployment):
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(),
                                     strict=True)


def test_a_python_step_validates_strictly_with_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "python-step.yaml"
    path.write_text(yaml.safe_dump_all(manifests(python_step(), python_component(),
                                                 python_image="oih:0.1.0")))
    cli = Path(sys.executable).with_name("kubernetes-validate")
    result = subprocess.run([str(cli), "--strict", "--quiet", str(path)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", ["image", "python"])
def test_workers_write_their_files_into_the_tmp_empty_dir(kind: str) -> None:
    """The sink built-in writes under OIH_DATA_DIR; the root filesystem is read-only."""
    documents = (manifests(spec(), component()) if kind == "image" else
                 manifests(python_step(), python_component(), python_image="oih:0.1.0"))
    container = documents[1]["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["OIH_DATA_DIR"] == "/tmp/oih"
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert any(env["OIH_DATA_DIR"].startswith(path + "/") for path in mounts)


def test_the_python_image_setting_reaches_the_driver() -> None:
    from dataclasses import replace

    from oih_orchestrator.server import make_driver
    from oih_orchestrator.settings import OrchestratorSettings
    from oih_runtime import settings as runtime_settings

    own = OrchestratorSettings.from_env({"OIH_ORCHESTRATOR_DRIVER": "kubernetes",
                                         "OIH_ORCHESTRATOR_PYTHON_IMAGE": "oih:0.1.0"})
    assert own.python_image == "oih:0.1.0"
    assert OrchestratorSettings.from_env({}).python_image == ""
    driver = make_driver(replace(runtime_settings.load("orchestrator", {})), own)
    assert isinstance(driver, KubernetesDriver) and driver.python_image == "oih:0.1.0"


def test_the_driver_matches_the_driver_protocol() -> None:
    driver = KubernetesDriver(namespace="flows", api_client=object())
    assert isinstance(driver, drivers.Driver)
    assert driver.name == "kubernetes"


def _v1pod(phase: str, ready: bool, waiting: str = "", deleting: bool = False) -> Any:
    state = SimpleNamespace(waiting=SimpleNamespace(reason=waiting) if waiting else None)
    status = SimpleNamespace(name="worker", ready=ready, restart_count=2, state=state,
                             last_state=SimpleNamespace(terminated=SimpleNamespace(
                                 exit_code=1, reason="Error")))
    return SimpleNamespace(
        metadata=SimpleNamespace(name="flow-f1-fetch-abc", annotations={"oih.step": "fetch"},
                                 deletion_timestamp="now" if deleting else None),
        status=SimpleNamespace(phase=phase, container_statuses=[status], start_time=None))


@pytest.mark.parametrize(("pod", "state"), [
    (_v1pod("Running", True), drivers.RUNNING),
    (_v1pod("Pending", False, "ContainerCreating"), drivers.STARTING),
    (_v1pod("Running", False, "CrashLoopBackOff"), drivers.RESTARTING),
    (_v1pod("Failed", False), drivers.FAILED),
    (_v1pod("Running", True, deleting=True), drivers.STOPPING),
])
def test_pods_become_worker_states(pod: Any, state: str) -> None:
    info = worker_info(_pod(pod))
    assert (info.state, info.step_id, info.instance, info.restarts) == (
        state, "fetch", "flow-f1-fetch-abc", 2)


def test_manifests_are_plain_json() -> None:
    json.dumps(sample_flow())  # what the API client sends; no objects hiding in it


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_the_deployment_gives_the_orchestrator_its_own_image_for_python_steps(
        overlay: str) -> None:
    """The built-ins must run on the cluster: the orchestrator's setting names the platform
    image, the same one the orchestrator itself runs (also after the prod `images` rename)."""
    from tests.deploy import test_manifests as deploy

    docs = deploy.kustomize(deploy.KUSTOMIZE / "overlays" / overlay)
    settings = deploy.config(docs)
    orchestrator = deploy.one(docs, "Deployment", "oih-orchestrator", "oih")
    image = orchestrator["spec"]["template"]["spec"]["containers"][0]["image"]
    assert settings["OIH_ORCHESTRATOR_PYTHON_IMAGE"] == image


def test_credentials_are_a_mounted_secret_never_in_the_deployment() -> None:
    documents = manifests(spec(), component(), credentials=CREDENTIALS)
    assert [d["kind"] for d in documents] == ["Secret", "Secret", "Deployment"]
    spec_secret, mounted, deployment = documents
    value = b"sk-live-do-not-show-0123456789"
    # Neither the Deployment nor the spec Secret carries the value, in any encoding.
    for document in (deployment, spec_secret):
        text = json.dumps(document)
        assert value.decode() not in text and base64.b64encode(value).decode() not in text
        assert base64.b64encode(CREDENTIALS).decode() not in text
    assert base64.b64decode(mounted["data"]["credentials.json"]) == CREDENTIALS
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volume = next(v for v in pod["volumes"] if v["name"] == "credentials")
    assert volume["secret"]["secretName"] == mounted["metadata"]["name"]
    assert volume["secret"]["defaultMode"] == 0o400
    mount = next(m for m in container["volumeMounts"] if m["name"] == "credentials")
    assert mount["readOnly"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["OIH_WORKER_CREDENTIALS_FILE"]["value"] == f"{mount['mountPath']}/credentials.json"
    assert all("valueFrom" not in e for e in container["env"])  # no secret as an env var
    # Removing the flow removes both Secrets: they carry the flow's labels.
    assert mounted["metadata"]["labels"] == spec_secret["metadata"]["labels"]
    # Without credentials, nothing of this.
    assert [d["kind"] for d in manifests(spec(), component())] == ["Secret", "Deployment"]
