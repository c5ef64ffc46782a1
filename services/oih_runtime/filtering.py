"""A small subset of AIP-160 list filters, turned into SQL conditions.

Grammar: `term (AND term)*`, where a term is `field OP value`, OP is `=`, `!=`, `<`, `>`,
`<=`, `>=` or `:` (contains, ignoring case), and a value is a bare word (`ACTIVE`, `true`, `42`) or a
double-quoted string (`"my flow"`). Each service declares which fields may be filtered and how
a value becomes a column comparison; anything else is INVALID_ARGUMENT naming `filter`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from oih_runtime.errors import InvalidArgument
from oih_runtime.paging import Key

_TERM = re.compile(
    r'\s*(?P<field>[a-z_][a-z0-9_.]*)\s*(?P<op>!=|<=|>=|=|<|>|:)\s*'
    r'(?P<value>"(?:[^"\\]|\\.)*"|[^\s"]+)\s*'
)
_AND = re.compile(r"\s+AND\s+")


@dataclass(frozen=True)
class Term:
    field: str
    op: str
    value: str


def parse(text: str) -> list[Term]:
    """Split a filter into its terms; raises INVALID_ARGUMENT for anything unparsable."""
    if not text.strip():
        return []
    terms = []
    for part in _AND.split(text.strip()):
        match = _TERM.fullmatch(part)
        if match is None:
            raise InvalidArgument.field("filter", f"cannot parse {part!r}; use field=value")
        value = match["value"]
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        terms.append(Term(match["field"], match["op"], value))
    return terms


#: Builds a SQL condition from (operator, value); raise ValueError for a bad value.
Condition = Callable[[str, str], Any]


def conditions(text: str, fields: Mapping[str, Condition]) -> list[Any]:
    """SQL conditions for a filter, given the filterable fields of a resource."""
    found = []
    for term in parse(text):
        build = fields.get(term.field)
        if build is None:
            allowed = ", ".join(sorted(fields))
            raise InvalidArgument.field("filter", f"cannot filter on {term.field!r}; use {allowed}")
        try:
            found.append(build(term.op, term.value))
        except ValueError as error:
            raise InvalidArgument.field("filter", f"{term.field}: {error}") from None
    return found


def compare(column: Any, op: str, value: Any) -> Any:
    """`column OP value` for the comparison operators (`:` means contains, for text, ignoring
    case)."""
    if op == "=":
        return column == value
    if op == "!=":
        return column != value
    if op == ":":
        # `%` and `_` are literal here, and case is ignored on every database (SQLite's LIKE
        # ignores it, PostgreSQL's would not).
        return column.icontains(value, autoescape=True)
    if op == "<":
        return column < value
    if op == ">":
        return column > value
    if op == "<=":
        return column <= value
    return column >= value


def order_keys(text: str, columns: Mapping[str, Any], default: list[Any], tie_breaker: Any
               ) -> list[Key]:
    """`"display_name, create_time desc"` → the sort keys of a keyset-paged list over the
    allowed columns, ending in `tie_breaker` (a primary key column) for a total order. The tie
    breaker goes the way of the key before it, so one index on (…, column, id) serves the
    order in either direction."""
    keys = [Key(column) for column in default] if not text.strip() else []
    for part in text.split(",") if text.strip() else ():
        words = part.split()
        if not words or len(words) > 2 or words[0] not in columns or (
            len(words) == 2 and words[1].lower() not in ("asc", "desc")
        ):
            allowed = ", ".join(sorted(columns))
            raise InvalidArgument.field("order_by", f"cannot order by {part.strip()!r}; use {allowed} [desc]")
        keys.append(Key(columns[words[0]], len(words) == 2 and words[1].lower() == "desc"))
    return [*keys, Key(tie_breaker, keys[-1].descending if keys else False)]


def order_by(text: str, columns: Mapping[str, Any], default: list[Any]) -> list[Any]:
    """`"display_name, create_time desc"` → ORDER BY clauses over the allowed columns."""
    return [key.clause for key in order_keys(text, columns, default, None)[:-1]]
