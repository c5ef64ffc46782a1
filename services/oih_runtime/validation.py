"""Input rules every request obeys, checked once by the validation interceptor.

- `google.api.field_behavior` REQUIRED fields: top-level ones must be set; in Create calls the
  REQUIRED fields of the resource being created too (in updates, the mask decides).
- No string anywhere in a request holds a NUL character: PostgreSQL text cannot store one, and
  no name, filter or payload needs one (raw bytes travel in `bytes` fields, which may).
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


def nul_paths(message: Message, prefix: str = "") -> list[str]:
    """Paths of the string fields (at any depth, Struct values included) that contain NUL."""
    found = []
    for field, value in message.ListFields():
        path = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                entry = f"{path}[{key!r}]"
                if "\0" in str(key):
                    found.append(entry)
                if isinstance(item, Message):
                    found += nul_paths(item, entry + ".")
                elif isinstance(item, str) and "\0" in item:
                    found.append(entry)
        elif field.is_repeated:
            for index, item in enumerate(value):
                if isinstance(item, Message):
                    found += nul_paths(item, f"{path}[{index}].")
                elif isinstance(item, str) and "\0" in item:
                    found.append(f"{path}[{index}]")
        elif isinstance(value, Message):
            found += nul_paths(value, path + ".")
        elif isinstance(value, str) and "\0" in value:
            found.append(path)
    return found


def check_no_nul(message: Message) -> None:
    """Raise INVALID_ARGUMENT naming every string field that contains a NUL character."""
    paths = nul_paths(message)
    if paths:
        raise InvalidArgument([(path, "must not contain NUL characters") for path in paths])
