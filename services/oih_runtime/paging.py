"""`page_size` / `page_token` pagination over SQL queries (AIP-158).

Two kinds of page token, both opaque to callers (base64 JSON with a fingerprint of the query,
so a token reused with different filters is refused instead of giving a wrong page):

- `keyset_page` (lists that grow with the work: flows, components, executions): the token
  holds the sort key of the page's last row, and the next page starts after it. With an index on
  the sort keys (tests/oih_runtime/test_query_plans.py) every page costs the same, the first or the
  ten-thousandth, and rows added or deleted meanwhile neither repeat nor skip others.
- `page` (short lists: tenants, roles, a tenant's users): the token holds an offset.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import and_, literal, or_, tuple_
from sqlmodel import Session, func, select
from sqlmodel.sql.expression import SelectOfScalar

from oih_runtime.errors import InvalidArgument

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: Beyond any real list, and within a 64-bit SQL integer (a forged token must not reach SQL).
MAX_OFFSET = 2**62


@dataclass(frozen=True)
class Key:
    """One sort key of a keyset-paged list: an ORM attribute (`col(FlowRow.create_time)`) and
    its direction. The last key must make the order total (a primary key column)."""

    column: Any
    descending: bool = False

    @property
    def clause(self) -> Any:
        return self.column.desc() if self.descending else self.column

    def value_of(self, row: Any) -> Any:
        return getattr(row, self.column.key)


def _size(page_size: int) -> int:
    if page_size < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _encode(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _decode(token: str, fingerprint: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data: Any = json.loads(raw)
        same_query = data["f"] == fingerprint
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidArgument.field("page_token", "not a page token of this list") from None
    if not same_query:
        raise InvalidArgument.field("page_token", "the page token belongs to another query")
    return dict(data)


def page(
    session: Session,
    query: SelectOfScalar[T],
    page_size: int,
    page_token: str,
    fingerprint: str = "",
) -> tuple[Sequence[T], str]:
    """One page of `query` (already filtered and ordered) and the next page's token."""
    size = _size(page_size)
    offset = 0
    if page_token:
        try:
            offset = int(_decode(page_token, fingerprint)["o"])
        except (KeyError, ValueError, TypeError, OverflowError):
            raise InvalidArgument.field("page_token", "not a page token of this list") from None
        if not 0 <= offset <= MAX_OFFSET:
            raise InvalidArgument.field("page_token", "not a page token of this list")
    rows = session.exec(query.offset(offset).limit(size + 1)).all()
    next_token = _encode({"o": offset + size, "f": fingerprint}) if len(rows) > size else ""
    return rows[:size], next_token


def keyset_page(
    session: Session,
    query: SelectOfScalar[T],
    keys: Sequence[Key],
    page_size: int,
    page_token: str,
    fingerprint: str = "",
) -> tuple[Sequence[T], str]:
    """One page of `query` (filtered, not ordered: `keys` order it) and the next page's token."""
    size = _size(page_size)
    if page_token:
        query = query.where(_after(keys, _decode_values(page_token, fingerprint, keys)))
    rows = session.exec(query.order_by(*(key.clause for key in keys)).limit(size + 1)).all()
    if len(rows) <= size:
        return rows, ""
    last = rows[size - 1]
    values = [_to_json(key.value_of(last)) for key in keys]
    return rows[:size], _encode({"k": values, "f": fingerprint})


def _after(keys: Sequence[Key], values: list[Any]) -> Any:
    """Rows after `values` in the order of `keys`. One row-value comparison when all keys go
    the same way (an index range scan on both databases); otherwise its expanded form."""
    bound = [literal(value, key.column.type) for key, value in zip(keys, values, strict=True)]
    if len({key.descending for key in keys}) == 1:
        left, right = tuple_(*(key.column for key in keys)), tuple_(*bound)
        return left < right if keys[0].descending else left > right
    alternatives = []
    for i, key in enumerate(keys):
        equal = [keys[j].column == bound[j] for j in range(i)]
        beyond = key.column < bound[i] if key.descending else key.column > bound[i]
        alternatives.append(and_(*equal, beyond))
    return or_(*alternatives)


def _decode_values(token: str, fingerprint: str, keys: Sequence[Key]) -> list[Any]:
    data = _decode(token, fingerprint)
    try:
        values = [_from_json(value) for value in data["k"]]
    except (KeyError, ValueError, TypeError):
        raise InvalidArgument.field("page_token", "not a page token of this list") from None
    # A forged token must not reach SQL with a value its column cannot hold.
    if len(values) != len(keys) or not all(
            _fits(value, key.column.type.python_type)
            for key, value in zip(keys, values, strict=True)):
        raise InvalidArgument.field("page_token", "not a page token of this list")
    return values


def _fits(value: Any, python_type: type) -> bool:
    if isinstance(value, str) and "\x00" in value:
        return False
    if isinstance(value, int) and not -MAX_OFFSET <= value <= MAX_OFFSET:
        return False
    return isinstance(value, python_type)


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"cannot page by a {type(value).__name__}")


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        return datetime.fromisoformat(value["t"])
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError("not a sort key value")


def count(session: Session, query: SelectOfScalar[Any]) -> int:
    return int(session.exec(select(func.count()).select_from(query.subquery())).one())
