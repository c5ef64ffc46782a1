"""ComponentRow ↔ oih.components.v1.Component."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from oih.components.v1 import components_pb2 as pb
from oih_components.models import ComponentRow, OwnerRow
from oih_runtime.clock import timestamp

COLLECTION = "components/"


def name(component_id: str) -> str:
    return COLLECTION + component_id



def component(row: ComponentRow) -> pb.Component:
    message = pb.Component(
        name=name(row.id), display_name=row.display_name, description=row.description,
        version=row.version, access=row.access,  # type: ignore[arg-type]
        owners=[pb.Owner(id=o.owner_id, type=o.owner_type)  # type: ignore[arg-type]
                for o in row.owners],
        tenant=row.tenant, triggers=[_function(f) for f in row.triggers],
        actions=[_function(f) for f in row.actions], etag=row.etag,
        create_time=timestamp(row.create_time), update_time=timestamp(row.update_time),
    )
    if row.image:
        message.container_image.image = row.image
        message.container_image.image_pull_policy = row.image_pull_policy  # type: ignore[assignment]
    elif row.entry_point:
        message.python_entry_point.object_reference = row.entry_point
    if row.resources:
        json_format.ParseDict(row.resources, message.resources)
    return message


def _function(stored: dict[str, Any]) -> pb.ComponentFunction:
    function = pb.ComponentFunction(name=stored["name"], description=stored.get("description", ""))
    if "config_schema" in stored:
        function.config_schema.update(stored["config_schema"])
    return function


def _stored_function(function: pb.ComponentFunction) -> dict[str, Any]:
    stored: dict[str, Any] = {"name": function.name, "description": function.description}
    if function.HasField("config_schema"):
        stored["config_schema"] = json_format.MessageToDict(function.config_schema)
    return stored


def fill(row: ComponentRow, message: pb.Component) -> None:
    """Copy every changeable field of a validated `message` onto `row` (new lists, never
    in-place edits, so SQLAlchemy notices the JSON columns changed)."""
    row.display_name = message.display_name
    row.description = message.description
    row.version = message.version
    row.access = message.access
    kind = message.WhichOneof("distribution")
    row.image = message.container_image.image if kind == "container_image" else ""
    row.image_pull_policy = (message.container_image.image_pull_policy
                             if kind == "container_image" else 0)
    row.entry_point = (message.python_entry_point.object_reference
                       if kind == "python_entry_point" else "")
    row.triggers = [_stored_function(f) for f in message.triggers]
    row.actions = [_stored_function(f) for f in message.actions]
    row.resources = (json_format.MessageToDict(message.resources)
                     if message.HasField("resources") else {})
    _set_owners(row, message.owners)


def _set_owners(row: ComponentRow, owners: Any) -> None:
    # Reuse the rows of owners that stay: deleting and re-inserting the same primary key in
    # one flush is an IntegrityError; delete-orphan removes the owners that went away.
    existing = {o.owner_id: o for o in row.owners}
    kept = []
    for position, owner in enumerate(owners):
        owner_row = existing.get(owner.id) or OwnerRow(component_id=row.id, owner_id=owner.id,
                                                       owner_type=owner.type)
        owner_row.owner_type = owner.type
        owner_row.position = position
        kept.append(owner_row)
    row.owners = kept
