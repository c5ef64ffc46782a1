"""Resource names (AIP-122): `collection/{id}`, parsed and formatted with one id rule.

Every service names its resources this way and every id is made by the platform (a uuid) or
chosen by a caller within this rule. The rule is the data plane's: a flow id becomes an
exchange, queue, folder and broker user name and a Kubernetes label value, so it may hold
no dot (`..` would reach beyond the flow's own folder), no slash and nothing a queue or a
label refuses. Checking every id once with the same rule means an id one service accepts is
never refused by another.
"""

from __future__ import annotations

import functools
import re

from oih_runtime.errors import InvalidArgument

#: One id: 1 to 64 characters of letters, digits, `_` and `-`.
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
ID_RULE = "1 to 64 characters of [A-Za-z0-9_-]"
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def is_id(value: str) -> bool:
    return ID.fullmatch(value) is not None


def name(collection: str, resource_id: str) -> str:
    """`flows`, `abc` → `flows/abc`."""
    return f"{collection}/{resource_id}"


def is_name(value: str, collection: str) -> bool:
    """Whether `value` is `collection/{id}` with one id by the rule."""
    prefix = collection + "/"
    return value.startswith(prefix) and is_id(value[len(prefix):])


def resource_id(value: str, collection: str, field: str) -> str:
    """`users/abc` → `abc`; anything else is INVALID_ARGUMENT naming `field`."""
    if not is_name(value, collection):
        raise InvalidArgument.field(field, f"must look like {collection}/{{id}}")
    return value[len(collection) + 1:]


def parse(template: str, value: str, field: str) -> tuple[str, ...]:
    """The ids of `value` by `template`, e.g. `flows/{flow}/executions/{execution}` → (flow,
    execution); anything else is INVALID_ARGUMENT naming `field`."""
    match = _compile(template).fullmatch(value)
    if match is None:
        raise InvalidArgument.field(field, f"must look like {template}")
    return match.groups()


@functools.cache
def _compile(template: str) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(template)
    # split() alternates literal text and placeholder names: escape the text, match the ids.
    pattern = "".join(re.escape(part) if index % 2 == 0 else f"({ID.pattern})"
                      for index, part in enumerate(parts))
    return re.compile(pattern)
