"""Input rules of a Component, checked on the complete component a call would store.

Create checks the request's component; Update checks the stored component with the masked
fields applied — so one set of rules covers both, and every violation names its field the way
the caller wrote it (`component.actions[1].name`). All violations are reported at once.
REQUIRED fields of a Create are already checked by the shared interceptor; the checks here
repeat the ones an Update can break (clearing a field through the mask).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import jsonschema
from google.protobuf import json_format

from oih.components.v1 import components_pb2 as pb
from oih_runtime.errors import InvalidArgument

MAX_DISPLAY_NAME, MAX_DESCRIPTION, MAX_VERSION, MAX_REFERENCE = 50, 300, 100, 500
MAX_FUNCTION_NAME = 100
#: The owners table's column (PostgreSQL enforces it; SQLite would store anything).
MAX_OWNER_ID = 200

#: `package.module:object` (the object may be dotted, as in Python entry points).
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
ENTRY_POINT = re.compile(rf"{_DOTTED}:{_DOTTED}")
#: Flow nodes reference functions by name: anything without blanks, so it survives a URL.
FUNCTION_NAME = re.compile(r"[^\s/]+")
#: A Kubernetes quantity such as `100m`, `1.5`, `256Mi`, `1e3`.
QUANTITY = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
#: Owner id prefixes by owner type: the id names a resource of the matching kind.
OWNER_PREFIX = {
    pb.OWNER_TYPE_USER: "users/",
    pb.OWNER_TYPE_TENANT: "tenants/",
    pb.OWNER_TYPE_SERVICE_ACCOUNT: "service-accounts/",
}
ACCESS_VALUES = {pb.ACCESS_PRIVATE, pb.ACCESS_TENANT, pb.ACCESS_PUBLIC}
PULL_POLICIES = set(pb.ContainerImage.PullPolicy.values())

Violations = list[tuple[str, str]]


def check(component: pb.Component, tenant: str, prefix: str = "component") -> None:
    """Raise INVALID_ARGUMENT naming every rule `component` (of `tenant`) breaks."""
    found: Violations = []
    found += _texts(component, prefix)
    found += _distribution(component, prefix)
    found += _owners(component.owners, tenant, f"{prefix}.owners")
    found += _functions(component.triggers, f"{prefix}.triggers")
    found += _functions(component.actions, f"{prefix}.actions")
    found += _resources(component, f"{prefix}.resources")
    if found:
        raise InvalidArgument(found)


def _texts(c: pb.Component, prefix: str) -> Violations:
    found = []
    if not c.display_name.strip():
        found.append((f"{prefix}.display_name", "required field is missing"))
    for field, limit in (("display_name", MAX_DISPLAY_NAME), ("description", MAX_DESCRIPTION),
                         ("version", MAX_VERSION)):
        if len(getattr(c, field)) > limit:
            found.append((f"{prefix}.{field}", f"at most {limit} characters"))
    if c.access not in ACCESS_VALUES:
        found.append((f"{prefix}.access", "must be ACCESS_PRIVATE, ACCESS_TENANT or ACCESS_PUBLIC"))
    return found


def _distribution(c: pb.Component, prefix: str) -> Violations:
    kind = c.WhichOneof("distribution")
    if kind is None:
        return [(f"{prefix}.distribution",
                 "set container_image (kubernetes driver) or python_entry_point (local driver)")]
    if kind == "container_image":
        image, found = c.container_image, []
        if (not image.image or len(image.image) > MAX_REFERENCE
                or any(ch.isspace() or not ch.isprintable() for ch in image.image)):
            found.append((f"{prefix}.container_image.image",
                          "an image reference such as ghcr.io/acme/crm:1.4.0, without blanks"))
        if image.image_pull_policy not in PULL_POLICIES:
            found.append((f"{prefix}.container_image.image_pull_policy", "unknown pull policy"))
        return found
    reference = c.python_entry_point.object_reference
    if not ENTRY_POINT.fullmatch(reference) or len(reference) > MAX_REFERENCE:
        return [(f"{prefix}.python_entry_point.object_reference",
                 f"must look like package.module:object, not {reference!r}")]
    return []


def _owners(owners: Iterable[pb.Owner], tenant: str, prefix: str) -> Violations:
    found, seen = [], set()
    for i, owner in enumerate(owners):
        where = f"{prefix}[{i}]"
        expected = OWNER_PREFIX.get(owner.type)
        if expected is None:
            found.append((f"{where}.type", "must be USER, TENANT or SERVICE_ACCOUNT"))
        elif not owner.id.startswith(expected) or len(owner.id) == len(expected) \
                or "/" in owner.id[len(expected):]:
            found.append((f"{where}.id", f"must look like {expected}{{id}} for this type"))
        elif owner.type == pb.OWNER_TYPE_TENANT and owner.id != tenant:
            # Owning makes a principal see and change the component: another tenant must never
            # be handed that (flows refuse it the same way).
            found.append((f"{where}.id", f"a component can only be owned by its own tenant "
                                         f"({tenant or 'none'})"))
        elif len(owner.id) > MAX_OWNER_ID:
            found.append((f"{where}.id", f"at most {MAX_OWNER_ID} characters"))
        elif owner.id in seen:
            found.append((f"{where}.id", f"{owner.id} is listed twice"))
        seen.add(owner.id)
    return found


def _functions(functions: Iterable[pb.ComponentFunction], prefix: str) -> Violations:
    found: Violations = []
    first: dict[str, int] = {}
    for i, function in enumerate(functions):
        where = f"{prefix}[{i}]"
        if not function.name:
            found.append((f"{where}.name", "required field is missing"))
        elif not FUNCTION_NAME.fullmatch(function.name) or len(function.name) > MAX_FUNCTION_NAME:
            found.append((f"{where}.name",
                          f"at most {MAX_FUNCTION_NAME} characters, without blanks or '/'"))
        elif function.name in first:
            found.append((f"{where}.name", f"duplicate name {function.name!r} "
                                           f"(also {prefix.rsplit('.', 1)[-1]}[{first[function.name]}])"))
        else:
            first[function.name] = i
        if function.HasField("config_schema"):
            found += _schema(function, f"{where}.config_schema")
    return found


def _schema(function: pb.ComponentFunction, where: str) -> Violations:
    """A node's configuration is a JSON object, so its schema must be a valid JSON Schema that
    accepts objects (no `type`, or `type` including "object")."""
    try:
        schema = json_format.MessageToDict(function.config_schema)
    except ValueError:
        return [(where, "must not contain NaN or Infinity (JSON has neither)")]
    kind = schema.get("type", "object")
    if kind != "object" and not (isinstance(kind, list) and "object" in kind):
        return [(where, 'must describe a JSON object (its "type" must be "object")')]
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        location = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return [(where, f"not a valid JSON Schema at {location}: {error.message}")]
    return []


def _resources(c: pb.Component, prefix: str) -> Violations:
    found = []
    for part in ("requests", "limits"):
        quantities = getattr(c.resources, part)
        for field in ("cpu", "memory"):
            value = getattr(quantities, field)
            if value and not QUANTITY.fullmatch(value):
                found.append((f"{prefix}.{part}.{field}",
                              f"a Kubernetes quantity such as 100m or 256Mi, not {value!r}"))
    return found
