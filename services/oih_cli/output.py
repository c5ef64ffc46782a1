"""How `oih` prints: Rich tables for people, `-o json|yaml|name` for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table

FORMATS = ("table", "json", "yaml", "name")
#: Where tables go. Piped, a table is as wide as its content (never cut for a script to
#: read); on a terminal, long cells wrap instead of being cut.
console = Console(width=None if sys.stdout.isatty() else 100_000)


def short_enum(value: Any) -> str:
    """`STATE_ACTIVE` → `ACTIVE`, `ACCESS_PUBLIC` → `PUBLIC` (tables only)."""
    text = "" if value is None else str(value)
    head, sep, tail = text.partition("_")
    return tail if sep and head.isupper() and tail else text


def field(item: Any, path: str) -> Any:
    """`a.b` of nested dicts; lists are joined with commas."""
    value = item
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, list):  # objects by their name (component triggers, actions)
        return ",".join(str(v.get("name", v) if isinstance(v, dict) else v) for v in value)
    return value


def cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def table(rows: Sequence[Any], columns: Sequence[tuple[str, str]], *,
          enums: Sequence[str] = ()) -> None:
    grid = Table(box=None, pad_edge=False, header_style="bold")
    for title, _path in columns:
        grid.add_column(title, overflow="fold")
    for row in rows:
        grid.add_row(*(
            short_enum(field(row, path)) if path in enums else cell(field(row, path))
            for _title, path in columns))
    console.print(grid)


def emit(data: Any, fmt: str) -> None:
    """Print a result (an object or a list of them) as JSON, YAML or names."""
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    elif fmt == "yaml":
        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)
    elif fmt == "name":
        items = data if isinstance(data, list) else [data]
        for item in items:
            click.echo(item.get("name", "") if isinstance(item, dict) else item)
    else:
        raise click.UsageError(f"unknown output format {fmt!r}")
