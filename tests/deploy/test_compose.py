"""deploy/compose.yaml: valid against the Compose specification's schema, fresh, and in step
with the Kubernetes manifests it is translated from (the dev overlay)."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
SCHEMA = ROOT / "third_party" / "compose-spec" / "compose-spec.json"


def load_render_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_render_compose",
                                                  ROOT / "deploy" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    # The file names draft 2019-09 (with an `http://…/draft/2019-09/schema#` URI that the
    # jsonschema library does not recognise by itself).
    assert "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema)


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    render = load_render_script()
    docs: list[dict[str, Any]] = render.kustomize(render.DEV_OVERLAY)
    return docs


def test_compose_file_is_valid_against_the_compose_spec(
        compose: dict[str, Any], validator: jsonschema.protocols.Validator) -> None:
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_the_schema_refuses_a_broken_compose_file(
        compose: dict[str, Any], validator: jsonschema.protocols.Validator) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["oih-iam"]["restart_policy"] = "always"  # not a service key
    broken["services"]["oih-gateway"]["ports"] = "8080:8080"  # must be a list
    assert len(list(validator.iter_errors(broken))) >= 2


def test_compose_file_is_fresh() -> None:
    render = load_render_script()
    stale = [p for p, content in render.rendered_compose().items()
             if not p.exists() or p.read_bytes() != content]
    assert stale == [], "run `python deploy/render.py`"


def test_every_workload_of_the_manifests_is_a_compose_service(
        compose: dict[str, Any], overlay: list[dict[str, Any]]) -> None:
    workloads = {d["metadata"]["name"]: d for d in overlay
                 if d["kind"] in ("Deployment", "StatefulSet")
                 and d["metadata"]["namespace"] == "oih"}
    assert set(compose["services"]) == set(workloads)
    assert {"oih-gateway", "oih-rabbitmq", "oih-postgres", "oih-iam", "oih-flows",
            "oih-components", "oih-orchestrator"} <= set(workloads)
    for name, workload in workloads.items():
        [container] = workload["spec"]["template"]["spec"]["containers"]
        service = compose["services"][name]
        assert service["image"] == container["image"]
        assert service.get("command") == container.get("args")
        assert service.get("entrypoint") == container.get("command")
    assert "rabbitmq" in compose["services"]["oih-rabbitmq"]["image"]
    assert "management" in compose["services"]["oih-rabbitmq"]["image"]


def test_services_get_the_settings_of_the_manifests(
        compose: dict[str, Any], overlay: list[dict[str, Any]]) -> None:
    render = load_render_script()
    for workload in overlay:
        if workload["kind"] != "Deployment" or workload["metadata"]["name"] == "oih-gateway":
            continue
        [container] = workload["spec"]["template"]["spec"]["containers"]
        env = compose["services"][workload["metadata"]["name"]]["environment"]
        names = {e["name"] for e in container.get("env", [])}
        assert names <= set(env), workload["metadata"]["name"]
        assert env["OIH_ORCHESTRATOR_DRIVER"] == "local"  # no Kubernetes API on one host
        assert not set(render.KUBERNETES_ONLY_ENV) & set(env)


def test_the_gateway_upstreams_are_compose_services(compose: dict[str, Any]) -> None:
    envoy = yaml.safe_load((ROOT / "deploy/kubernetes/base/gateway/envoy.yaml").read_text())
    services = compose["services"]
    for cluster in envoy["static_resources"]["clusters"]:
        for endpoint in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            address = endpoint["endpoint"]["address"]["socket_address"]
            host, port = address["address"], address["port_value"]
            if host == "127.0.0.1":
                continue  # the gateway's own listener (JWKS)
            if host not in services:
                continue  # a contract-only service: its routes answer 503, as on Kubernetes
            env = services[host]["environment"]
            assert str(port) in {v for k, v in env.items() if k.endswith("_PORT")}, host


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / "deploy" / source).is_file(), volume
