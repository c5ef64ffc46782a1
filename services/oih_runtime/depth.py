"""How deep free-form JSON (`google.protobuf.Struct`, `Value`, `ListValue`) may nest in a request.

JSON arrives in a node's `fields`, a component's `config_schema`, `:execute` data and the like.
protobuf refuses to decode a message nested more than 100 levels deep, and each JSON level costs
two or three message levels — so without a rule of our own, JSON about 33 levels deep would fail
in gRPC's deserializer (INTERNAL, "Exception deserializing request!") and shallower JSON would
pass into messages that wrap it further (events, executions) and fail there. The rule: JSON
nests at most `MAX_JSON_DEPTH` levels, whatever reaches the service is checked, and a request
too deep even to decode is answered the same way. Both name the outermost JSON field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message

from oih_runtime.errors import InvalidArgument

#: Levels of objects and arrays a JSON value may nest (`{"a": {"b": 1}}` is 2).
MAX_JSON_DEPTH = 24
JSON_TYPES = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"


def json_depth(value: Message) -> int:
    """Levels of objects and arrays in a Struct, Value or ListValue (at most MAX_JSON_DEPTH + 1:
    the count stops once the limit is passed)."""
    def depth(item: Message, level: int) -> int:
        if level > MAX_JSON_DEPTH:
            return level
        kind = item.DESCRIPTOR.full_name
        if kind == "google.protobuf.Value":
            which = item.WhichOneof("kind")
            return depth(getattr(item, which), level) if which in (
                "struct_value", "list_value") else level - 1
        children: Any = (item.fields.values() if kind == "google.protobuf.Struct"  # type: ignore[attr-defined]
                         else item.values)  # type: ignore[attr-defined]
        return max((depth(child, level + 1) for child in children), default=level)
    return depth(value, 1)


def too_deep_paths(message: Message, prefix: str = "") -> list[str]:
    """Paths of the JSON fields (at any depth of `message`) nested deeper than allowed."""
    found = []
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        path = prefix + field.name
        if field.message_type.GetOptions().map_entry:
            items = [(f"{path}[{key!r}]", item) for key, item in value.items()]
        elif field.is_repeated:
            items = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
        else:
            items = [(path, value)]
        for where, item in items:
            if not isinstance(item, Message):
                continue
            if item.DESCRIPTOR.full_name in JSON_TYPES:
                if json_depth(item) > MAX_JSON_DEPTH:
                    found.append(where)
            else:
                found += too_deep_paths(item, where + ".")
    return found


def check_json_depth(message: Message) -> None:
    """Raise INVALID_ARGUMENT naming every JSON field nested deeper than allowed."""
    paths = too_deep_paths(message)
    if paths:
        raise InvalidArgument([(path, TOO_DEEP) for path in paths])


# --- requests too deep to decode -------------------------------------------------------------

class Undecodable:
    """What the lenient deserializer hands on instead of a request it could not decode."""

    def __init__(self, data: bytes, error: DecodeError) -> None:
        self.data = data
        self.error = error


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, answering `Undecodable` instead of raising (gRPC would answer INTERNAL)."""
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError as error:
            return Undecodable(data, error)
    return deserialize


def refuse_undecodable(request: Undecodable, descriptor: Descriptor) -> InvalidArgument:
    """The INVALID_ARGUMENT for a request of type `descriptor` that did not decode."""
    path = _too_deep_json_field(request.data, descriptor, "")
    if path is not None:
        return InvalidArgument.field(path, TOO_DEEP)
    return InvalidArgument.field("(request)", f"not a valid {descriptor.full_name}: "
                                              f"{request.error}")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise DecodeError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _too_deep_json_field(data: bytes, descriptor: Descriptor, prefix: str) -> str | None:
    """Walk the wire format of `data` (a `descriptor` message) through its message fields to
    the first JSON field nested too deep (it does not decode, or decodes too deep)."""
    seen: dict[int, int] = {}
    position = 0
    try:
        while position < len(data):
            key, position = _varint(data, position)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, position = _varint(data, position)
            elif wire_type == 1:
                position += 8
            elif wire_type == 5:
                position += 4
            elif wire_type == 2:
                length, position = _varint(data, position)
                chunk, position = data[position:position + length], position + length
                field = descriptor.fields_by_number.get(number)
                index = seen.get(number, 0)
                seen[number] = index + 1
                if field is None or field.message_type is None:
                    continue
                path = prefix + field.name + (f"[{index}]" if field.is_repeated else "")
                kind = field.message_type
                if kind.full_name in JSON_TYPES:
                    try:
                        value = message_factory.GetMessageClass(kind).FromString(chunk)
                    except DecodeError:
                        return path
                    if json_depth(value) > MAX_JSON_DEPTH:  # decodes alone, not where it sits
                        return path
                else:
                    inner = _too_deep_json_field(chunk, kind, path + ".")
                    if inner is not None:
                        return inner
            else:
                return None  # groups: not in our contracts
    except DecodeError:
        return None
    return None
