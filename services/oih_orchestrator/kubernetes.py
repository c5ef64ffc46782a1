"""The kubernetes driver: each step of a flow is a Deployment whose env comes from a Secret.

`manifests()` is pure (spec + component → two dicts) so it can be validated offline; the
`KubernetesDriver` only sends them through the official client and reads pods back.

Names and labels:
- Deployment `flow-<flow>-<step>-<hash>` and Secret `…-env`, lower-cased and cut to a DNS-1123
  label. The hash of the exact ids is always there: without it flow `a-b` step `c` and flow `a`
  step `b-c` would share a name, and so would `My_Flow` and `my-flow` once lower-cased.
- Labels `oih.flow`, `oih.step`, `oih.tenant` select; label values allow 63 characters of
  `[A-Za-z0-9._-]` starting and ending alphanumeric, so an id that does not fit (a flow id may
  start with `-`, a tenant is `tenants/…`) becomes a valid value with a hash. The exact ids are
  in annotations of the same names, which is what `flows()` and `workers()` report.

The pod is hardened like every platform service (restricted Pod Security Standard): non-root,
read-only root filesystem with an emptyDir on /tmp, no privilege escalation, no capabilities,
RuntimeDefault seccomp, no service-account token (a worker never calls the Kubernetes API), no
service-link env vars. The worker finishes and acks its in-flight messages on SIGTERM within
its STOP_TIMEOUT (30 s); the grace period leaves room for that plus the last report.
The worker has no network endpoint, so there are no probes: it exits when it loses the broker,
and the kubelet restarts it.

Which image: a component with a `container_image` runs in that image. A component with a
`python_entry_point` (the built-ins, and Python components installed into the platform image)
runs in the platform image (`OIH_ORCHESTRATOR_PYTHON_IMAGE`, built from deploy/Dockerfile, which
contains oih_worker and oih_builtins) with the same `python -m oih_worker`; the StepSpec in the
Secret names the entry point. Without that setting such a component is refused. `OIH_DATA_DIR`
points at the emptyDir (`/tmp/oih`), so a component that writes files (the sink built-in) works
on the read-only root filesystem.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from oih.components.v1 import components_pb2
from oih_worker.runtime import STOP_TIMEOUT
from oih_worker.spec import StepSpec

from .drivers import FAILED, RESTARTING, RUNNING, STARTING, STOPPING, WorkerInfo

MANAGED_BY = "oih-orchestrator"
LABEL_FLOW, LABEL_STEP, LABEL_TENANT = "oih.flow", "oih.step", "oih.tenant"
SPEC_HASH = "oih.spec-hash"
CONTAINER = "worker"
DEFAULT_NAMESPACE = "flows"
DEFAULT_REQUESTS = {"cpu": "100m", "memory": "128Mi"}
DEFAULT_LIMITS = {"cpu": "250m", "memory": "256Mi"}
#: Any non-root uid works; a fixed one makes `runAsNonRoot` verifiable for images whose USER is
#: a name (the kubelet cannot tell a named user is not root).
RUN_AS = 10001
GRACE_SECONDS = int(STOP_TIMEOUT) + 15
#: Where components may write (in the /tmp emptyDir; the root filesystem is read-only).
DATA_DIR = "/tmp/oih"  # noqa: S108 - an emptyDir of this pod, not shared
#: Where the step's credentials Secret is mounted (read-only, tmpfs), and its one key.
CREDENTIALS_DIR = "/var/run/oih/credentials"
CREDENTIALS_FILE = "credentials.json"

_PULL = {
    components_pb2.ContainerImage.PULL_POLICY_UNSPECIFIED: "Always",  # as in the original OIH
    components_pb2.ContainerImage.PULL_POLICY_ALWAYS: "Always",
    components_pb2.ContainerImage.PULL_POLICY_IF_NOT_PRESENT: "IfNotPresent",
    components_pb2.ContainerImage.PULL_POLICY_NEVER: "Never",
}
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def dns_label(text: str, *exact: str, max_length: int = 63) -> str:
    """`text` made a DNS-1123 label, ending in a hash of `exact` (default: `text`)."""
    clean = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")
    suffix = _digest(*(exact or (text,)))
    return f"{clean[:max_length - len(suffix) - 1].rstrip('-')}-{suffix}".lstrip("-")


def label_value(text: str) -> str:
    """`text` as a label value (exact when it already is one)."""
    if len(text) <= 63 and _LABEL_VALUE.match(text):
        return text
    clean = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:54].strip("-_.")
    return f"{clean}-{_digest(text)}" if clean else _digest(text)


def deployment_name(flow_id: str, step_id: str) -> str:
    # 63, not 253: the name prefixes pod names and the `app.kubernetes.io/instance` label.
    return dns_label(f"flow-{flow_id}-{step_id}", flow_id, step_id, max_length=63 - 4)


def secret_name(flow_id: str, step_id: str) -> str:
    return f"{deployment_name(flow_id, step_id)}-env"


def credentials_name(flow_id: str, step_id: str) -> str:
    return f"{deployment_name(flow_id, step_id)}-cred"


def flow_selector(flow_id: str) -> str:
    return f"app.kubernetes.io/managed-by={MANAGED_BY},{LABEL_FLOW}={label_value(flow_id)}"


def _resources(component: components_pb2.Component) -> dict[str, dict[str, str]]:
    wanted = component.resources
    requests = {"cpu": wanted.requests.cpu or DEFAULT_REQUESTS["cpu"],
                "memory": wanted.requests.memory or DEFAULT_REQUESTS["memory"]}
    limits = {"cpu": wanted.limits.cpu or DEFAULT_LIMITS["cpu"],
              "memory": wanted.limits.memory or DEFAULT_LIMITS["memory"]}
    return {"requests": requests, "limits": limits}


def refusal(component: components_pb2.Component, python_image: str = "") -> str:
    """Why the kubernetes driver cannot run `component` ("" when it can)."""
    kind = component.WhichOneof("distribution")
    if kind == "container_image" and component.container_image.image:
        return ""
    if kind == "python_entry_point" and component.python_entry_point.object_reference:
        if python_image:
            return ""
        return (f"component {component.name or component.display_name!r} is a Python entry "
                "point, which the kubernetes driver runs in the platform image: set "
                "OIH_ORCHESTRATOR_PYTHON_IMAGE (the image built from deploy/Dockerfile)")
    return (f"component {component.name or component.display_name!r} has neither a container "
            "image nor a Python entry point")


def _image(component: components_pb2.Component, python_image: str) -> tuple[str, str]:
    """The container image and its pull policy."""
    reason = refusal(component, python_image)
    if reason:
        raise ValueError(reason)
    if component.WhichOneof("distribution") == "container_image":
        image = component.container_image
        return image.image, _PULL.get(image.image_pull_policy, "Always")
    # The platform image is versioned with the platform (a fixed tag): pulled once per node.
    return python_image, "IfNotPresent"


def manifests(spec: StepSpec, component: components_pb2.Component, *,
              namespace: str = DEFAULT_NAMESPACE, replicas: int = 1,
              python_image: str = "", credentials: bytes | None = None,
              egress_allowed_networks: str = "") -> list[dict[str, Any]]:
    """The Secrets and the Deployment of one step (Secrets first: they must exist first).

    The first Secret holds `OIH_WORKER_SPEC`, the step's StepSpec as JSON including its broker
    credentials, which is why it is a Secret and not a ConfigMap or a plain env var.
    `credentials` (the step's resolved secret, JSON) go into a second Secret that the pod
    mounts as a file (tmpfs), so they are in no env var and not in the Deployment's spec.
    `python_image` runs a component that is a Python entry point (see the module docstring).
    `egress_allowed_networks` is the administrator's allow-list of internal networks flows may
    call (`OIH_EGRESS_ALLOWED_NETWORKS`, see oih_sdk.egress).
    """
    image, pull_policy = _image(component, python_image)
    name = deployment_name(spec.flow_id, spec.step_id)
    spec_json = spec.to_json()
    selector = {"app.kubernetes.io/name": "oih-worker", "app.kubernetes.io/instance": name}
    labels = {
        **selector,
        "app.kubernetes.io/component": "flow-step",
        "app.kubernetes.io/part-of": "open-integration-hub",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_FLOW: label_value(spec.flow_id),
        LABEL_STEP: label_value(spec.step_id),
        LABEL_TENANT: label_value(spec.tenant.rsplit("/", 1)[-1]),
    }
    annotations = {LABEL_FLOW: spec.flow_id, LABEL_STEP: spec.step_id, LABEL_TENANT: spec.tenant}
    metadata = {"name": name, "namespace": namespace, "labels": labels,
                "annotations": annotations}
    secret: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {**metadata, "name": secret_name(spec.flow_id, spec.step_id)},
        "stringData": {"OIH_WORKER_SPEC": spec_json},
    }
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": pull_policy,
        "command": ["python", "-m", "oih_worker"],
        "envFrom": [{"secretRef": {"name": secret["metadata"]["name"]}}],
        "env": [
            # The root filesystem is read-only: no .pyc files, temporary files on /tmp.
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            {"name": "TMPDIR", "value": "/tmp"},  # noqa: S108 - an emptyDir, not shared
            # Files components write (the sink built-in) go to the emptyDir too.
            {"name": "OIH_DATA_DIR", "value": DATA_DIR},
            *([{"name": "OIH_EGRESS_ALLOWED_NETWORKS", "value": egress_allowed_networks}]
              if egress_allowed_networks else []),
        ],
        "resources": _resources(component),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    documents: list[dict[str, Any]] = [secret]
    if credentials is not None:
        mounted: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {**metadata, "name": credentials_name(spec.flow_id, spec.step_id)},
            "data": {CREDENTIALS_FILE: base64.b64encode(credentials).decode()},
        }
        documents.append(mounted)
        volumes.append({"name": "credentials", "secret": {
            "secretName": mounted["metadata"]["name"], "defaultMode": 0o400}})
        container["volumeMounts"].append(
            {"name": "credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True})
        container["env"].append(
            {"name": "OIH_WORKER_CREDENTIALS_FILE",
             "value": f"{CREDENTIALS_DIR}/{CREDENTIALS_FILE}"})
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": labels,
                    # Changing the Secret alone would not restart the pods; a changed hash does.
                    "annotations": {**annotations, SPEC_HASH: _digest(spec_json)},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }
    return [*documents, deployment]


# --- pods → WorkerInfo ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Pod:
    name: str
    step_id: str
    phase: str
    deleting: bool
    ready: bool
    restarts: int
    waiting_reason: str
    terminated_reason: str
    start_time: datetime | None


def worker_info(pod: _Pod) -> WorkerInfo:
    if pod.deleting:
        state, reason = STOPPING, ""
    elif pod.phase == "Failed":
        state, reason = FAILED, pod.terminated_reason or "pod failed"
    elif pod.waiting_reason in ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull",
                                "CreateContainerConfigError", "RunContainerError"):
        state, reason = RESTARTING, pod.waiting_reason
    elif pod.phase == "Running" and pod.ready:
        state, reason = RUNNING, ""
    else:
        state, reason = STARTING, pod.waiting_reason
    return WorkerInfo(step_id=pod.step_id, state=state, instance=pod.name,
                      restarts=pod.restarts, start_time=pod.start_time, state_reason=reason)


def _pod(item: Any) -> _Pod:
    """The fields we need from a kubernetes.client V1Pod."""
    statuses = [s for s in (item.status.container_statuses or []) if s.name == CONTAINER]
    status = statuses[0] if statuses else None
    waiting = status.state.waiting if status and status.state else None
    terminated = (status.last_state.terminated if status and status.last_state else None)
    annotations = item.metadata.annotations or {}
    return _Pod(name=item.metadata.name, step_id=annotations.get(LABEL_STEP, ""),
                phase=item.status.phase or "", deleting=item.metadata.deletion_timestamp is not None,
                ready=bool(status and status.ready), restarts=status.restart_count if status else 0,
                waiting_reason=(waiting.reason or "") if waiting else "",
                terminated_reason=(f"exit {terminated.exit_code}: {terminated.reason or ''}"
                                   .strip() if terminated else ""),
                start_time=item.status.start_time)


# --- the driver -----------------------------------------------------------------------------

class KubernetesDriver:
    """Runs each step as a Deployment through the Kubernetes API (in-cluster config, else the
    local kubeconfig). Idempotent: deploy creates or replaces, remove deletes by label."""

    name = "kubernetes"

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, api_client: Any = None, *,
                 python_image: str = "", egress_allowed_networks: str = "") -> None:
        self.namespace = namespace
        #: The platform image, which runs Python entry-point components ("" refuses them).
        self.python_image = python_image
        self.egress_allowed_networks = egress_allowed_networks
        self._api_client = api_client

    def refusal(self, component: components_pb2.Component) -> str:
        """Why this driver cannot run `component` ("" when it can)."""
        return refusal(component, self.python_image)

    def _apis(self) -> tuple[Any, Any]:
        from kubernetes import client, config  # imported late: only this driver needs it

        if self._api_client is None:
            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            self._api_client = client.ApiClient()
        return client.CoreV1Api(self._api_client), client.AppsV1Api(self._api_client)

    def deploy(self, flow_id: str, specs: Sequence[StepSpec],
               components: Mapping[str, components_pb2.Component],
               credentials: Mapping[str, bytes] | None = None) -> None:
        core, apps = self._apis()
        for spec in specs:
            *secrets, deployment = manifests(
                spec, components[spec.step_id], namespace=self.namespace,
                python_image=self.python_image,
                credentials=(credentials or {}).get(spec.step_id),
                egress_allowed_networks=self.egress_allowed_networks)
            for secret in secrets:
                self._apply(core.create_namespaced_secret, core.replace_namespaced_secret,
                            secret)
            self._apply(apps.create_namespaced_deployment, apps.replace_namespaced_deployment,
                        deployment)

    def _apply(self, create: Any, replace: Any, body: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            create(self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:  # 409: it exists; replace it with the new spec
                raise
            replace(body["metadata"]["name"], self.namespace, body)

    def remove(self, flow_id: str) -> None:
        core, apps = self._apis()
        selector = flow_selector(flow_id)
        # Deployments first (their pods get SIGTERM and the grace period), then the Secrets;
        # a terminating pod keeps the env it started with.
        apps.delete_collection_namespaced_deployment(
            self.namespace, label_selector=selector, propagation_policy="Background")
        core.delete_collection_namespaced_secret(self.namespace, label_selector=selector)

    def workers(self, flow_id: str) -> list[WorkerInfo]:
        core, _apps = self._apis()
        pods = core.list_namespaced_pod(self.namespace, label_selector=flow_selector(flow_id))
        return [worker_info(_pod(item)) for item in pods.items
                if (item.metadata.annotations or {}).get(LABEL_FLOW) == flow_id]

    def flows(self) -> set[str]:
        core, apps = self._apis()
        selector = f"app.kubernetes.io/managed-by={MANAGED_BY}"
        found: set[str] = set()
        # Secrets too: a leftover Secret (a remove interrupted half-way) is a flow to clean up.
        for listing in (apps.list_namespaced_deployment(self.namespace, label_selector=selector),
                        core.list_namespaced_secret(self.namespace, label_selector=selector)):
            for item in listing.items:
                flow = (item.metadata.annotations or {}).get(LABEL_FLOW)
                if flow:
                    found.add(flow)
        return found


def to_json(documents: Sequence[Mapping[str, Any]]) -> str:
    """The manifests as one JSON list (for `kubectl apply -f -` or debugging)."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(documents)}, indent=2)
