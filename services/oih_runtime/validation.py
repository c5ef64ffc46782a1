"""Input rules from the contract: `google.api.field_behavior` REQUIRED fields.

The interceptor checks every request: top-level REQUIRED fields must be set; in Create calls
the REQUIRED fields of the resource being created too (in updates, the mask decides).
"""

from __future__ import annotations

from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.message import Message

from oih_runtime.errors import InvalidArgument


def _required(field: Any) -> bool:
    behaviors = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return field_behavior_pb2.REQUIRED in behaviors


def _is_set(message: Message, field: Any) -> bool:
    if field.is_repeated:
        return len(getattr(message, field.name)) > 0
    if field.message_type is not None:
        return message.HasField(field.name)
    return bool(getattr(message, field.name))


def missing_required(message: Message, *, recurse: bool, prefix: str = "") -> list[str]:
    """Paths of REQUIRED fields that are not set."""
    missing = []
    for field in message.DESCRIPTOR.fields:
        path = prefix + field.name
        if _required(field) and not _is_set(message, field):
            missing.append(path)
        elif (
            recurse
            and field.message_type is not None
            and not field.is_repeated
            and field.message_type.full_name.startswith("oih.")
            and message.HasField(field.name)
        ):
            missing += missing_required(getattr(message, field.name), recurse=True, prefix=path + ".")
    return missing


def check_required(message: Message, method_name: str) -> None:
    """Raise INVALID_ARGUMENT naming every missing REQUIRED field."""
    missing = missing_required(message, recurse=method_name.startswith("Create"))
    if missing:
        raise InvalidArgument([(path, "required field is missing") for path in missing])
