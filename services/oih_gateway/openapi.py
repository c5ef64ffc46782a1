"""Render an OpenAPI 3.1 document of the REST surface from the contract (the descriptor set).

The same source as the Envoy config (`render.py`): every `google.api.http` binding of every
`oih.*` service becomes an operation, so the document always describes exactly what the gateway
routes. What it says, and where from:

- paths: a path template's variable is spelled out (`/v1/{name=flows/*}:start` →
  `/v1/flows/{flow}:start`), one path parameter per `*`, named after the collection before it;
  the fields of the request that are neither in the path nor in the body are query parameters
  (nested messages as `a.b`), as the transcoder reads them;
- schemas: the proto JSON mapping as the gateway prints it (original field names; int64 as a
  string; enums as their names; `Struct`/`Value` as free JSON; Timestamp, Duration, FieldMask as
  strings). The lowerCamel names the transcoder also accepts are listed as write-only aliases;
- `google.api.field_behavior`: REQUIRED → `required`, OUTPUT_ONLY → `readOnly`, INPUT_ONLY →
  `writeOnly`;
- proto comments → descriptions (services → tags, RPCs → operations, messages, fields, enums);
- `(oih.auth.v1.rule)`: a bearer (JWT) security scheme on every operation except the public
  ones (`security: []`, `x-oih-public: true`); the permission an RPC needs in its description;
- errors: the JSON body `{"code", "message", "details"}` for every error status.

The function is pure: same descriptor set, same document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor_pb2

from oih.auth.v1 import auth_pb2

__all__ = ["dumps_openapi", "openapi_path", "render_openapi"]

OPENAPI_VERSION = "3.1.0"
TITLE = "Open Integration Hub"
API_VERSION = "v1"
SECURITY_SCHEME = "bearerAuth"
ERROR_SCHEMA = "Error"
HTTP_BODY = "google.api.HttpBody"

FD = descriptor_pb2.FieldDescriptorProto
# Tag numbers of DescriptorProto / FileDescriptorProto fields, for SourceCodeInfo paths.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_SERVICE_METHOD, _ENUM_VALUE = 2, 2

#: Error statuses every operation may answer, with what they mean here. Errors from a service
#: carry the gRPC code in `code`; errors Envoy makes itself (401, 404 route, 413, 503) the HTTP
#: status.
ERROR_STATUSES: dict[str, str] = {
    "400": "Bad input (a `google.rpc.BadRequest` detail names each field) or a failed precondition.",
    "401": "No token, or an invalid, expired or revoked one; or bad credentials.",
    "403": "The caller lacks the permission the operation needs.",
    "404": "No such object (another tenant's objects answer the same), or no such route.",
    "409": "Already exists, or a stale `etag` (aborted).",
    "413": "The request body is over the gateway's limit.",
    "429": "Too many attempts (a `google.rpc.RetryInfo` detail says when to retry).",
    "500": "An unexpected error; the message holds only a request id.",
    "503": "The service is not available (not running yet, or restarting).",
    "504": "The operation took longer than its deadline.",
}

_SCALARS: dict[int, dict[str, Any]] = {
    FD.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FD.TYPE_FLOAT: {"type": "number", "format": "float"},
    FD.TYPE_INT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FD.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FD.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    FD.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1},
    # Proto JSON prints 64-bit integers as strings (JavaScript numbers lose precision).
    FD.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FD.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FD.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FD.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    FD.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    FD.TYPE_BOOL: {"type": "boolean"},
    FD.TYPE_STRING: {"type": "string"},
    FD.TYPE_BYTES: {"type": "string", "format": "byte", "contentEncoding": "base64"},
}

_WRAPPERS = {
    "google.protobuf.DoubleValue": FD.TYPE_DOUBLE,
    "google.protobuf.FloatValue": FD.TYPE_FLOAT,
    "google.protobuf.Int64Value": FD.TYPE_INT64,
    "google.protobuf.UInt64Value": FD.TYPE_UINT64,
    "google.protobuf.Int32Value": FD.TYPE_INT32,
    "google.protobuf.UInt32Value": FD.TYPE_UINT32,
    "google.protobuf.BoolValue": FD.TYPE_BOOL,
    "google.protobuf.StringValue": FD.TYPE_STRING,
    "google.protobuf.BytesValue": FD.TYPE_BYTES,
}

#: Well-known types that have a JSON form of their own (not an object of their fields).
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time",
                                  "description": "RFC 3339 time, e.g. `2024-01-31T12:00:00Z`."},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
                                 "description": "Seconds with an `s` suffix, e.g. `1.5s`."},
    "google.protobuf.FieldMask": {"type": "string",
                                  "description": "Comma-separated field paths, e.g. "
                                                 "`description,graph`."},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True,
                               "description": "Any JSON object."},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {},
                                  "description": "Any JSON array."},
    "google.protobuf.NullValue": {"type": "null"},
    "google.protobuf.Empty": {"type": "object", "properties": {}},
    "google.protobuf.Any": {"type": "object", "additionalProperties": True,
                            "properties": {"@type": {"type": "string"}},
                            "required": ["@type"],
                            "description": "A message of the type named by `@type`, with its "
                                           "fields beside it."},
}
#: Well-known types that may be a query parameter (they are strings in JSON).
_QUERY_WELL_KNOWN = {"google.protobuf.Timestamp", "google.protobuf.Duration",
                     "google.protobuf.FieldMask"}


@dataclass(frozen=True)
class _Message:
    proto: descriptor_pb2.DescriptorProto
    file: descriptor_pb2.FileDescriptorProto
    path: tuple[int, ...]


@dataclass(frozen=True)
class _Enum:
    proto: descriptor_pb2.EnumDescriptorProto
    file: descriptor_pb2.FileDescriptorProto
    path: tuple[int, ...]


class _Contract:
    """The descriptor set, indexed: messages, enums and comments by name."""

    def __init__(self, descriptor_set: bytes) -> None:
        self.files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
        self.messages: dict[str, _Message] = {}
        self.enums: dict[str, _Enum] = {}
        self.comments: dict[tuple[str, tuple[int, ...]], str] = {}
        for file in self.files.file:
            prefix = file.package
            for i, message in enumerate(file.message_type):
                self._add_message(file, prefix, message, (_FILE_MESSAGE, i))
            for i, enum in enumerate(file.enum_type):
                self.enums[_join(prefix, enum.name)] = _Enum(enum, file, (_FILE_ENUM, i))
            for location in file.source_code_info.location:
                text = _clean_comment(location.leading_comments or location.trailing_comments)
                if text:
                    self.comments[(file.name, tuple(location.path))] = text

    def _add_message(self, file: descriptor_pb2.FileDescriptorProto, prefix: str,
                     message: descriptor_pb2.DescriptorProto, path: tuple[int, ...]) -> None:
        name = _join(prefix, message.name)
        self.messages[name] = _Message(message, file, path)
        for i, nested in enumerate(message.nested_type):
            self._add_message(file, name, nested, (*path, _MESSAGE_NESTED, i))
        for i, enum in enumerate(message.enum_type):
            self.enums[_join(name, enum.name)] = _Enum(enum, file, (*path, _MESSAGE_ENUM, i))

    def comment(self, file: descriptor_pb2.FileDescriptorProto, path: tuple[int, ...]) -> str:
        return self.comments.get((file.name, path), "")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _clean_comment(text: str) -> str:
    """A proto comment as Markdown: one leading space per line removed, ends trimmed."""
    lines = [line[1:] if line.startswith(" ") else line for line in text.splitlines()]
    return "\n".join(lines).strip()


def _type_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    return field.type_name.lstrip(".")


def _behaviors(field: descriptor_pb2.FieldDescriptorProto) -> set[int]:
    return set(field.options.Extensions[field_behavior_pb2.field_behavior])


def _json_name(field: descriptor_pb2.FieldDescriptorProto) -> str:
    if field.json_name:
        return field.json_name
    head, *rest = field.name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


# --------------------------------------------------------------------------------------------
# Path templates


@dataclass(frozen=True)
class _PathParam:
    name: str  # the OpenAPI parameter
    field_path: str  # the request field it is part of, e.g. "flow.name"
    pattern: str  # what the whole field looks like, e.g. "flows/{flow}"


def _singular(collection: str) -> str:
    word = re.sub(r"(?<!^)(?=[A-Z])", "_", collection).replace("-", "_").lower()
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith("s"):
        return word[:-1]
    return word


def _expand_template(template: str) -> tuple[str, list[_PathParam]]:
    """`/v1/{name=flows/*/executions/*}` → (`/v1/flows/{flow}/executions/{execution}`, params)."""
    params: list[_PathParam] = []
    used: set[str] = set()

    def variable(match: re.Match[str]) -> str:
        field_path, _eq, sub = match.group(1).partition("=")
        segments = sub.split("/") if sub else ["*"]
        out: list[str] = []
        previous = ""
        for segment in segments:
            if segment in ("*", "**"):
                name = _singular(previous) if previous else field_path.replace(".", "_")
                base, n = name, 2
                while name in used:
                    name, n = f"{base}{n}", n + 1
                used.add(name)
                params.append(_PathParam(name, field_path, ""))
                out.append("{" + name + "}")
            else:
                out.append(segment)
                previous = segment
        spelled = "/".join(out)
        # Every param of this variable learns the shape of the whole field.
        for i, param in enumerate(params):
            if param.field_path == field_path and not param.pattern:
                params[i] = _PathParam(param.name, field_path, spelled)
        return spelled

    return re.sub(r"\{([^}]*)\}", variable, template), params


# --------------------------------------------------------------------------------------------
# Schemas


class _Schemas:
    """Builds `components.schemas` on demand, one entry per message or enum reached."""

    def __init__(self, contract: _Contract) -> None:
        self.contract = contract
        self.schemas: dict[str, Any] = {}

    def ref(self, type_name: str) -> dict[str, Any]:
        """A schema for a message or enum type: inline for well-known types, else a $ref."""
        if type_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[type_name])
        if type_name in _WRAPPERS:
            return {**_SCALARS[_WRAPPERS[type_name]], "description": "May be `null`."}
        if type_name not in self.schemas:
            self.schemas[type_name] = {}  # placeholder: recursive types terminate
            if type_name in self.contract.enums:
                self.schemas[type_name] = self._enum(self.contract.enums[type_name])
            else:
                self.schemas[type_name] = self.message(type_name)
        return {"$ref": f"#/components/schemas/{type_name}"}

    def update_ref(self, type_name: str) -> dict[str, Any]:
        """A resource as an update body: its REQUIRED fields are not (the update mask decides)."""
        schema = self.message(type_name) if type_name in self.contract.messages else {}
        if "required" not in schema:
            return self.ref(type_name)
        name = f"{type_name}_Update"
        if name not in self.schemas:
            del schema["required"]
            schema["description"] = (schema.get("description", "") + "\n\nAs an update body: "
                                     "only the fields named by `update_mask` (or, without a "
                                     "mask, the fields set) are changed.").strip()
            self.schemas[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    def _enum(self, enum: _Enum) -> dict[str, Any]:
        values = [value.name for value in enum.proto.value]
        lines = [self.contract.comment(enum.file, enum.path)]
        for i, value in enumerate(enum.proto.value):
            text = self.contract.comment(enum.file, (*enum.path, _ENUM_VALUE, i))
            lines.append(f"- `{value.name}`" + (f": {text}" if text else ""))
        return {"type": "string", "enum": values,
                "description": "\n".join(line for line in lines if line)}

    def field(self, field: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        """The schema of a field's value (arrays and maps included)."""
        if field.type == FD.TYPE_MESSAGE:
            entry = self.contract.messages.get(_type_name(field))
            if entry is not None and entry.proto.options.map_entry:
                value = next(f for f in entry.proto.field if f.name == "value")
                return {"type": "object", "additionalProperties": self.field(value)}
            item = self.ref(_type_name(field))
        elif field.type == FD.TYPE_ENUM:
            item = self.ref(_type_name(field))
        else:
            item = dict(_SCALARS[field.type])
        if field.label == FD.LABEL_REPEATED:
            return {"type": "array", "items": item}
        return item

    def message(self, type_name: str, *, leave_out: frozenset[str] = frozenset(),
                description: str | None = None) -> dict[str, Any]:
        """An object schema of a message's fields (those in `leave_out` excepted)."""
        entry = self.contract.messages[type_name]
        properties: dict[str, Any] = {}
        aliases: dict[str, Any] = {}
        required: list[str] = []
        for i, field in enumerate(entry.proto.field):
            if field.name in leave_out:
                continue
            schema = self.field(field)
            text = self.contract.comment(entry.file, (*entry.path, _MESSAGE_FIELD, i))
            behaviors = _behaviors(field)
            if field_behavior_pb2.IMMUTABLE in behaviors:
                text = (text + "\n\n" if text else "") + "Immutable: set on create only."
            if field.HasField("oneof_index") and not field.proto3_optional:
                oneof = entry.proto.oneof_decl[field.oneof_index].name
                text = (text + "\n\n" if text else "") + f"At most one field of `{oneof}` is set."
            schema = _annotate(schema, text)
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                schema["readOnly"] = True
            if field_behavior_pb2.INPUT_ONLY in behaviors:
                schema["writeOnly"] = True
            if field_behavior_pb2.REQUIRED in behaviors:
                required.append(field.name)
            properties[field.name] = schema
            json_name = _json_name(field)
            if json_name != field.name:
                aliases[json_name] = {
                    **{k: v for k, v in schema.items() if k not in ("description", "readOnly")},
                    "writeOnly": True,
                    "description": f"Alias of `{field.name}` (the proto JSON lowerCamel name; "
                                   "accepted in requests, never printed).",
                }
        result: dict[str, Any] = {"type": "object", "properties": {**properties, **aliases}}
        if required:
            result["required"] = required
        text = self.contract.comment(entry.file, entry.path) if description is None else description
        if text:
            result["description"] = text
        return result


def _annotate(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """A field's schema with its description (a $ref gets it beside, as 3.1 allows)."""
    if not text:
        return schema
    own = schema.get("description")
    return {**schema, "description": f"{text}\n\n{own}" if own and "$ref" not in schema else text}


# --------------------------------------------------------------------------------------------
# Operations


def _http_bindings(rule: http_pb2.HttpRule) -> Iterator[tuple[str, str, str]]:
    """(method, template, body) of a rule and its additional bindings."""
    kind = rule.WhichOneof("pattern")
    if kind == "custom":
        yield rule.custom.kind.lower(), rule.custom.path, rule.body
    elif kind is not None:
        yield kind, getattr(rule, kind), rule.body
    for extra in rule.additional_bindings:
        yield from _http_bindings(extra)


def _field_type(contract: _Contract, type_name: str, field_path: str) -> str:
    """The type name of a (possibly nested) field of a message, e.g. `flow` of a request."""
    current = type_name
    for part in field_path.split("."):
        message = contract.messages[current].proto
        field = next(f for f in message.field if f.name == part)
        current = _type_name(field)
    return current


def _query_parameters(schemas: _Schemas, type_name: str, bound: set[str],
                      prefix: str = "", depth: int = 0) -> Iterator[dict[str, Any]]:
    """The fields of a request the transcoder reads from the query string."""
    contract = schemas.contract
    entry = contract.messages[type_name]
    for i, field in enumerate(entry.proto.field):
        path = prefix + field.name
        if path in bound:
            continue
        text = contract.comment(entry.file, (*entry.path, _MESSAGE_FIELD, i))
        name = _type_name(field)
        if field.type == FD.TYPE_MESSAGE:
            if name in _QUERY_WELL_KNOWN or name in _WRAPPERS:
                schema = schemas.field(field)
            elif (name in contract.messages and not contract.messages[name].proto.options.map_entry
                  and field.label != FD.LABEL_REPEATED and not name.startswith("google.")
                  and depth < 3):
                yield from _query_parameters(schemas, name, bound, path + ".", depth + 1)
                continue
            else:
                continue  # maps, repeated messages and free JSON cannot be query parameters
        else:
            schema = schemas.field(field)
        parameter: dict[str, Any] = {"name": path, "in": "query", "schema": schema}
        if text:
            parameter["description"] = text
        if field.label == FD.LABEL_REPEATED:
            parameter["style"], parameter["explode"] = "form", True
        yield parameter


def _operation_id(service: str, method: str, index: int) -> str:
    short = service.rsplit(".", 1)[-1]
    return f"{short}_{method}" + (f"_{index + 1}" if index else "")


def render_openapi(descriptor_set: bytes) -> dict[str, Any]:
    """The OpenAPI 3.1 document (as a dict) of every REST binding in the descriptor set."""
    contract = _Contract(descriptor_set)
    schemas = _Schemas(contract)
    paths: dict[str, dict[str, Any]] = {}
    tags: list[dict[str, Any]] = []
    for file in contract.files.file:
        if not (file.package == "oih" or file.package.startswith("oih.")):
            continue
        for s, service in enumerate(file.service):
            full_service = _join(file.package, service.name)
            tag: dict[str, Any] = {"name": service.name}
            text = contract.comment(file, (_FILE_SERVICE, s))
            if text:
                tag["description"] = text
            bound_any = False
            for m, method in enumerate(service.method):
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                bound_any = True
                rule = method.options.Extensions[annotations_pb2.http]
                auth = method.options.Extensions[auth_pb2.rule]
                public = method.options.HasExtension(auth_pb2.rule) and auth.public
                description = contract.comment(file, (_FILE_SERVICE, s, _SERVICE_METHOD, m))
                for index, (verb, template, body) in enumerate(_http_bindings(rule)):
                    path, operation = _operation(
                        schemas, full_service, method, verb, template, body, index,
                        public=public, permission=auth.permission, description=description,
                        tag=service.name)
                    paths.setdefault(path, {})[verb] = operation
            if bound_any:
                tags.append(tag)

    schemas.schemas[ERROR_SCHEMA] = _error_schema()
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": TITLE,
            "version": API_VERSION,
            "description": (
                "The REST surface of the Open Integration Hub gateway (Envoy transcoding the "
                "gRPC services). Rendered by `python -m oih_gateway render` from the protos; do "
                "not edit.\n\nResponses use the proto field names (`display_name`); requests "
                "may use them or the lowerCamel JSON names (`displayName`). Every operation "
                "but the public ones needs `Authorization: Bearer <token>` (from `POST "
                "/v1/login` or `POST /v1/tokens:exchange`). Every error is JSON: "
                "`{\"code\", \"message\", \"details\"}`."),
        },
        "servers": [{"url": "/"}],
        "security": [{SECURITY_SCHEME: []}],
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.schemas.items())),
            "responses": {
                code: {"description": text,
                       "content": {"application/json": {
                           "schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}}}
                for code, text in ERROR_STATUSES.items()
            },
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "An access token from `POST /v1/login` (users) or "
                                   "`POST /v1/tokens:exchange` (service accounts).",
                }
            },
        },
    }


def _operation(schemas: _Schemas, service: str, method: descriptor_pb2.MethodDescriptorProto,
               verb: str, template: str, body: str, index: int, *, public: bool,
               permission: str, description: str, tag: str) -> tuple[str, dict[str, Any]]:
    contract = schemas.contract
    input_type, output_type = method.input_type.lstrip("."), method.output_type.lstrip(".")
    path, path_params = _expand_template(template)
    bound = {p.field_path for p in path_params}
    parameters: list[dict[str, Any]] = [
        {"name": p.name, "in": "path", "required": True,
         "description": f"The `{{{p.name}}}` of `{p.field_path}` (`{p.pattern}`).",
         "schema": {"type": "string", "pattern": "^[^/]+$"}}
        for p in path_params
    ]
    operation: dict[str, Any] = {
        "operationId": _operation_id(service, method.name, index),
        "tags": [tag],
        "summary": description.split("\n\n")[0].split(". ")[0].rstrip(".") if description else
        method.name,
    }
    notes = []
    if public:
        notes.append("Public: no token needed.")
    elif permission:
        notes.append(f"Needs the permission `{permission}`.")
    operation["description"] = "\n\n".join(x for x in (description, *notes) if x)
    if body == "*":
        leave_out = frozenset(b for b in bound if "." not in b)
        request = schemas.message(input_type, leave_out=leave_out)
        if not leave_out:
            request = schemas.ref(input_type)
        operation["requestBody"] = {"required": True,
                                    "content": {"application/json": {"schema": request}}}
    elif body:
        body_type = _field_type(contract, input_type, body)
        if body_type == HTTP_BODY:
            operation["requestBody"] = {
                "description": "The raw request body, passed on untouched with its content type.",
                "content": {"*/*": {"schema": {}}}}
        else:
            # REQUIRED fields of the resource are enforced on create only (oih_runtime.validation).
            schema = (schemas.ref(body_type) if method.name.startswith("Create")
                      else schemas.update_ref(body_type))
            operation["requestBody"] = {
                "required": True, "content": {"application/json": {"schema": schema}}}
    if body != "*":
        body_field = {body} if body else set()
        parameters += list(_query_parameters(schemas, input_type, bound | body_field))
    if parameters:
        operation["parameters"] = parameters
    if output_type == HTTP_BODY:
        ok: dict[str, Any] = {"description": "The response body and its content type.",
                              "content": {"*/*": {"schema": {}}}}
    else:
        ok = {"description": "OK",
              "content": {"application/json": {"schema": schemas.ref(output_type)}}}
    operation["responses"] = {
        "200": ok,
        **{code: {"$ref": f"#/components/responses/{code}"} for code in ERROR_STATUSES},
    }
    if public:
        operation["security"] = []
        operation["x-oih-public"] = True
    elif permission:
        operation["x-oih-permission"] = permission
    return path, operation


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Every error. From a service (through the transcoder), `code` is the "
                       "gRPC status code and `details` holds `google.rpc` details "
                       "(`BadRequest`, `ErrorInfo`, `RetryInfo`, `PreconditionFailure`); from "
                       "the gateway itself (401, 404 route, 413, 503) `code` is the HTTP status "
                       "and there are no details.",
        "properties": {
            "code": {"type": "integer", "format": "int32"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": _WELL_KNOWN["google.protobuf.Any"]},
        },
        "required": ["code", "message"],
    }


def dumps_openapi(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def openapi_path(root: Path) -> Path:
    """Where the committed document lives in a checkout."""
    return root / "gateway" / "openapi.json"
