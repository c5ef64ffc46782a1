"""`page_size` / `page_token` pagination over SQL queries (AIP-158).

The token is opaque to callers: base64 of the offset and a fingerprint of the query, so a token
reused with different filters is refused instead of giving a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlmodel import Session, func, select
from sqlmodel.sql.expression import SelectOfScalar

from oih_runtime.errors import InvalidArgument

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: Beyond any real list, and within a 64-bit SQL integer (a forged token must not reach SQL).
MAX_OFFSET = 2**62


def _encode(offset: int, fingerprint: str) -> str:
    raw = json.dumps({"o": offset, "f": fingerprint}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str, fingerprint: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data: Any = json.loads(raw)
        offset = int(data["o"])
        same_query = data["f"] == fingerprint
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError):
        raise InvalidArgument.field("page_token", "not a page token of this list") from None
    if not same_query or not 0 <= offset <= MAX_OFFSET:
        raise InvalidArgument.field("page_token", "the page token belongs to another query")
    return offset


def page(
    session: Session,
    query: SelectOfScalar[T],
    page_size: int,
    page_token: str,
    fingerprint: str = "",
) -> tuple[Sequence[T], str]:
    """One page of `query` (already filtered and ordered) and the next page's token."""
    if page_size < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    offset = _decode(page_token, fingerprint) if page_token else 0
    rows = session.exec(query.offset(offset).limit(size + 1)).all()
    next_token = _encode(offset + size, fingerprint) if len(rows) > size else ""
    return rows[:size], next_token


def count(session: Session, query: SelectOfScalar[Any]) -> int:
    return int(session.exec(select(func.count()).select_from(query.subquery())).one())
