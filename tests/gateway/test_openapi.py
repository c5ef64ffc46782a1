"""The OpenAPI document: fresh, valid OpenAPI 3.1, and saying what the contract says."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from oih_gateway import layout
from oih_gateway.cli import stale_files
from oih_gateway.openapi import ERROR_STATUSES, render_openapi
from oih_gateway.render import read_rpcs

DESCRIPTOR = layout.DESCRIPTOR_SET.read_bytes()


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return render_openapi(DESCRIPTOR)


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, verb, op) for path, item in document["paths"].items()
            for verb, op in item.items()]


def schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = document["components"]["schemas"][name]
    return found


def test_committed_document_is_fresh() -> None:
    assert stale_files(DESCRIPTOR) == [], "run `python -m oih_gateway render`"


def test_committed_document_is_valid_openapi_3_1() -> None:
    committed = json.loads(layout.OPENAPI.read_text())
    assert committed["openapi"].startswith("3.1")
    validate_openapi(committed)


def test_the_validator_refuses_a_broken_document(document: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(document))
    broken["paths"]["/v1/flows"]["get"]["responses"]["200"] = {"content": {}}  # no description
    with pytest.raises(OpenAPIValidationError):
        validate_openapi(broken)


def test_every_http_binding_of_every_rpc_is_an_operation(document: dict[str, Any]) -> None:
    bindings = sum(len(rpc.http) for rpc in read_rpcs(DESCRIPTOR))
    ids = [op["operationId"] for _p, _v, op in operations(document)]
    assert len(ids) == bindings
    assert len(set(ids)) == len(ids)
    for rpc in read_rpcs(DESCRIPTOR):
        if not rpc.http:  # internal RPCs (no REST binding) are not part of the REST surface
            assert not any(i.endswith(f"_{rpc.name}") for i in ids)
            continue
        short = rpc.service.rsplit(".", 1)[-1]
        assert f"{short}_{rpc.name}" in ids


def test_path_templates_are_spelled_out_with_one_parameter_per_wildcard(
        document: dict[str, Any]) -> None:
    replay = document["paths"]["/v1/flows/{flow}/deadLetters/{dead_letter}:replay"]["post"]
    names = [(p["name"], p["in"]) for p in replay["parameters"]]
    assert names == [("flow", "path"), ("dead_letter", "path")]
    assert "/v1/flows/{flow}:start" in document["paths"]
    assert "/v1/service-accounts/{service_account}:resetSecret" in document["paths"]


def test_query_parameters_are_the_fields_outside_path_and_body(document: dict[str, Any]) -> None:
    listing = document["paths"]["/v1/flows"]["get"]
    query = {p["name"]: p for p in listing["parameters"] if p["in"] == "query"}
    assert {"page_size", "page_token", "filter", "order_by"} <= set(query)
    assert query["page_size"]["schema"]["type"] == "integer"
    update = document["paths"]["/v1/flows/{flow}"]["patch"]
    assert [p["name"] for p in update["parameters"] if p["in"] == "query"] == ["update_mask"]
    start = document["paths"]["/v1/flows/{flow}:start"]["post"]  # body "*": no query
    assert all(p["in"] == "path" for p in start["parameters"])


def test_schemas_follow_the_proto_json_mapping(document: dict[str, Any]) -> None:
    flow = schema(document, "oih.flows.v1.Flow")["properties"]
    assert flow["version"]["type"] == "string"  # int64
    assert flow["version"]["readOnly"] is True  # OUTPUT_ONLY
    assert flow["create_time"]["format"] == "date-time"
    assert flow["state"]["$ref"] == "#/components/schemas/oih.flows.v1.State"
    assert "STATE_ACTIVE" in schema(document, "oih.flows.v1.State")["enum"]
    node = schema(document, "oih.flows.v1.Node")["properties"]
    assert node["fields"]["type"] == "object"  # Struct: free JSON
    # The lowerCamel JSON names are accepted on input only.
    assert flow["displayName"]["writeOnly"] is True
    assert flow["display_name"]["type"] == "string"


def test_field_behavior_required_and_update_bodies(document: dict[str, Any]) -> None:
    assert {"display_name", "graph"} <= set(schema(document, "oih.flows.v1.Flow")["required"])
    create = document["paths"]["/v1/flows"]["post"]["requestBody"]
    assert create["content"]["application/json"]["schema"]["$ref"].endswith("oih.flows.v1.Flow")
    update = document["paths"]["/v1/flows/{flow}"]["patch"]["requestBody"]
    name = update["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert "required" not in schema(document, name)  # the update mask decides


def test_comments_become_descriptions(document: dict[str, Any]) -> None:
    tags = {t["name"]: t.get("description", "") for t in document["tags"]}
    assert "Flow Repository" in tags["FlowService"]
    start = document["paths"]["/v1/flows/{flow}:start"]["post"]
    assert "STARTING" in start["description"]
    assert "`flows.control`" in start["description"]
    assert schema(document, "oih.flows.v1.Flow")["properties"]["state"]["description"]


def test_bearer_security_with_public_operations_marked(document: dict[str, Any]) -> None:
    assert document["security"] == [{"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    public = {op["operationId"] for _p, _v, op in operations(document) if op.get("x-oih-public")}
    expected = {f"{rpc.service.rsplit('.', 1)[-1]}_{rpc.name}" for rpc in read_rpcs(DESCRIPTOR)
                if rpc.public}
    # Further bindings of one RPC get `_2`, `_3`, … appended to its operation id.
    assert {re.sub(r"_[0-9]+$", "", p) for p in public} == expected
    for _path, _verb, op in operations(document):
        assert ("security" in op) == bool(op.get("x-oih-public"))
        if "security" in op:
            assert op["security"] == []


def test_every_operation_documents_the_json_error_body(document: dict[str, Any]) -> None:
    for _path, _verb, op in operations(document):
        for code in ERROR_STATUSES:
            assert op["responses"][code] == {"$ref": f"#/components/responses/{code}"}
    error = document["components"]["responses"]["400"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/Error"}
    assert schema(document, "Error")["required"] == ["code", "message"]
