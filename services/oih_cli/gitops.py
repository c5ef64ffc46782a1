"""Flows as files: `oih apply -f flows/` and `oih export`.

A flow file is YAML (or JSON) holding one flow in its JSON mapping (the `Flow` schema of the
platform's `/openapi.json`), with the fields a person writes: `display_name`, `description`,
`graph`, `cron`, `webhook_settings`. A node's `component` may be a component's display name
(`transform`) instead of its resource name (`components/…`). Several flows may share a file as
YAML documents separated by `---`.

The stable key is the display name within the caller's tenant: `apply` creates a flow no flow of
that name exists, updates it when its managed fields differ (an update needs the flow stopped),
and leaves it alone otherwise, so applying twice changes nothing. Every file is read and
validated against the schema, and every component name resolved, before anything is sent;
`--dry-run` shows what would change as a diff and sends nothing. `export` writes the flows back
as files in the same form.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import jsonschema
import yaml

from oih_cli.client import CONFLICT, USAGE, CliError, Platform, quote_name
from oih_cli.commands import platform

FLOW_SCHEMA = "oih.flows.v1.Flow"
#: Writable fields of a flow that files do not manage: its identity, its concurrency token and
#: its owners (people of one platform, which another platform does not have).
UNMANAGED = frozenset({"name", "etag", "owners"})
SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class FlowFile:
    path: Path
    index: int  # the YAML document within the file
    flow: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path}" + (f" (document {self.index + 1})" if self.index else "")


@dataclass
class Plan:
    file: FlowFile
    desired: dict[str, Any]
    current: dict[str, Any] | None  # its managed fields now; None: it does not exist yet
    changed: list[str] = field(default_factory=list)
    existing: dict[str, Any] = field(default_factory=dict)  # the flow as the platform has it

    @property
    def action(self) -> str:
        if self.current is None:
            return "create"
        return "update" if self.changed else "unchanged"


# --------------------------------------------------------------------------------------------
# The schema (from the platform's OpenAPI document)


def _strict(schema: Any, schemas: dict[str, Any]) -> Any:
    """A copy of a schema that refuses unknown and read-only fields (a typo is an error)."""
    if isinstance(schema, list):
        return [_strict(s, schemas) for s in schema]
    if not isinstance(schema, dict):
        return schema
    result = {k: _strict(v, schemas) for k, v in schema.items()}
    properties = result.get("properties")
    if isinstance(properties, dict) and "additionalProperties" not in result:
        result["additionalProperties"] = False
        result["properties"] = {
            name: (False if isinstance(sub, dict) and sub.get("readOnly") else sub)
            for name, sub in properties.items()}
    return result


class FlowSchema:
    def __init__(self, openapi: dict[str, Any]) -> None:
        schemas = openapi["components"]["schemas"]
        self.flow = schemas[FLOW_SCHEMA]
        strict = {name: _strict(s, schemas) for name, s in schemas.items()}
        root = {**strict[FLOW_SCHEMA], "$defs": strict}
        text = json.dumps(root).replace("#/components/schemas/", "#/$defs/")
        self.validator = jsonschema.Draft202012Validator(json.loads(text))

    @property
    def managed(self) -> list[str]:
        """The fields of a flow that files manage: writable ones, aliases excepted."""
        return [name for name, s in self.flow["properties"].items()
                if not s.get("readOnly") and not s.get("writeOnly") and name not in UNMANAGED]

    def errors(self, flow: Any) -> list[str]:
        found = []
        for error in sorted(self.validator.iter_errors(flow), key=lambda e: list(e.path)):
            where = ".".join(str(p) for p in error.path) or "(top)"
            message = error.message
            if error.validator == "additionalProperties" or error.schema is False:
                message = "unknown or read-only field: " + message
            found.append(f"{where}: {message}")
        if isinstance(flow, dict):
            unmanaged = sorted(UNMANAGED & set(flow))
            found += [f"{name}: not managed by files (the display name is the key)"
                      for name in unmanaged]
        return found


def fetch_schema(client: Platform) -> FlowSchema:
    return FlowSchema(client.call("GET", "/openapi.json", what="read the API schema",
                                  authenticated=False))


# --------------------------------------------------------------------------------------------
# Reading files


def flow_files(paths: tuple[Path, ...]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        elif path.exists():
            found.append(path)
        else:
            raise CliError(f"{path}: no such file or directory", USAGE)
    if not found:
        raise CliError("no flow files (*.yaml, *.yml, *.json) found", USAGE)
    return found


def read_files(paths: list[Path], schema: FlowSchema) -> list[FlowFile]:
    """Every flow in the files; raises with every problem of every file at once."""
    flows: list[FlowFile] = []
    problems: list[str] = []
    for path in paths:
        try:
            documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            problems.append(f"{path}: not YAML: {str(error).splitlines()[0]}")
            continue
        for index, document in enumerate(documents):
            item = FlowFile(path, index, document)
            errors = schema.errors(document)
            if isinstance(document, dict) and not document.get("display_name"):
                errors.append("display_name: required (it is the flow's key)")
            problems += [f"{item.where}: {error}" for error in errors]
            if not errors:
                flows.append(item)
    seen: dict[str, FlowFile] = {}
    for item in flows:
        key = item.flow["display_name"]
        if key in seen:
            problems.append(f"{item.where}: display_name {key!r} is also in {seen[key].where}")
        seen[key] = item
    if problems:
        raise CliError("invalid flow files, nothing was sent:\n  " + "\n  ".join(problems),
                       USAGE)
    return flows


# --------------------------------------------------------------------------------------------
# Comparing


def normalized(value: Any) -> Any:
    """Drop what carries no information (empty values, enum zero values), recursively."""
    if isinstance(value, dict):
        pairs = {k: normalized(v) for k, v in value.items()}
        return {k: v for k, v in pairs.items() if not _empty(v)}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def _empty(value: Any) -> bool:
    if value is None or value == "" or value == [] or value == {} or value is False:
        return True
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return True
    return isinstance(value, str) and (value.endswith("_UNSPECIFIED") or value in ("0", "0s"))


def managed_part(flow: dict[str, Any], schema: FlowSchema) -> dict[str, Any]:
    result: dict[str, Any] = normalized({k: v for k, v in flow.items() if k in schema.managed})
    return result


def as_yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=100)


def diff(plan: Plan) -> str:
    before = as_yaml(plan.current).splitlines(keepends=True) if plan.current is not None else []
    after = as_yaml(plan.desired).splitlines(keepends=True)
    name = plan.current.get("display_name") if plan.current else plan.desired["display_name"]
    return "".join(difflib.unified_diff(before, after, f"platform: {name}", f"{plan.file.where}"))


# --------------------------------------------------------------------------------------------
# Components by name


class Components:
    """The components the caller sees, to turn display names into resource names and back."""

    def __init__(self, client: Platform) -> None:
        self.items = list(client.list_all("/v1/components", "components", page_size=100))
        self.by_name = {c["name"]: c for c in self.items}

    def resolve(self, ref: str) -> str:
        if ref.startswith("components/"):
            return ref
        matches = [str(c["name"]) for c in self.items if c.get("display_name") == ref]
        if not matches:
            raise ValueError(f"no component named {ref!r} is visible to you")
        if len(matches) > 1:
            # The caller's tenant's own component wins over public ones of the same name.
            own = [n for n in matches if self.by_name[n].get("access") != "ACCESS_PUBLIC"]
            if len(own) == 1:
                return own[0]
            raise ValueError(f"component name {ref!r} is ambiguous ({', '.join(matches)}): "
                             "use the resource name")
        return matches[0]

    def display(self, name: str) -> str:
        """The display name to write for a component, if it names exactly one."""
        component = self.by_name.get(name)
        if component is None:
            return name
        try:
            return component["display_name"] if self.resolve(component["display_name"]) == name \
                else name
        except ValueError:
            return name


def resolve_components(item: FlowFile, components: Components) -> tuple[dict[str, Any], list[str]]:
    flow = json.loads(json.dumps(item.flow))
    problems = []
    for i, node in enumerate(((flow.get("graph") or {}).get("nodes")) or []):
        if isinstance(node, dict) and node.get("component"):
            try:
                node["component"] = components.resolve(node["component"])
            except ValueError as error:
                problems.append(f"{item.where}: graph.nodes[{i}].component: {error}")
    return flow, problems


# --------------------------------------------------------------------------------------------
# apply / export


def existing_flows(client: Platform) -> dict[str, dict[str, Any]]:
    by_key: dict[str, list[dict[str, Any]]] = {}
    for flow in client.list_all("/v1/flows", "flows", page_size=100):
        by_key.setdefault(flow.get("display_name", ""), []).append(flow)
    duplicated = {k: [f["name"] for f in v] for k, v in by_key.items() if len(v) > 1}
    single = {k: v[0] for k, v in by_key.items() if len(v) == 1}
    single.update({k: {"__duplicates__": names} for k, names in duplicated.items()})
    return single


def plan(client: Platform, paths: tuple[Path, ...]) -> list[Plan]:
    schema = fetch_schema(client)
    files = read_files(flow_files(paths), schema)
    components = Components(client)
    current = existing_flows(client)
    plans, problems = [], []
    for item in files:
        flow, errors = resolve_components(item, components)
        problems += errors
        existing = current.get(flow["display_name"])
        if existing is not None and "__duplicates__" in existing:
            problems.append(f"{item.where}: display_name {flow['display_name']!r} names several "
                            f"flows ({', '.join(existing['__duplicates__'])}); rename them")
            continue
        desired = managed_part(flow, schema)
        if existing is None:
            plans.append(Plan(item, desired, None))
            continue
        now = managed_part(existing, schema)
        _adopt_edge_ids(desired, now)
        changed = [k for k in sorted(set(desired) | set(now)) if desired.get(k) != now.get(k)]
        plans.append(Plan(item, desired, now, changed, existing))
    if problems:
        raise CliError("cannot apply, nothing was sent:\n  " + "\n  ".join(problems), USAGE)
    return plans


def _adopt_edge_ids(desired: dict[str, Any], current: dict[str, Any]) -> None:
    """An edge a file leaves without an id keeps the one the platform gave it (`e1`, …)."""
    mine = (desired.get("graph") or {}).get("edges") or []
    theirs = (current.get("graph") or {}).get("edges") or []
    for edge, existing in zip(mine, theirs, strict=False):
        if isinstance(edge, dict) and "id" not in edge and existing.get("id"):
            edge["id"] = existing["id"]
            # Keep the usual key order (id first) so that diffs stay readable.
            edge_items = list(edge.items())
            edge.clear()
            edge.update([("id", existing["id"]), *[(k, v) for k, v in edge_items if k != "id"]])


def apply_plan(client: Platform, step: Plan) -> str:
    if step.action == "create":
        created = client.call("POST", "/v1/flows", step.desired,
                              what=f"create {step.file.where}")
        return f"{created['name']} created ({step.desired['display_name']})"
    name = step.existing["name"]
    if step.action == "unchanged":
        return f"{name} unchanged ({step.desired['display_name']})"
    if step.existing.get("state") not in ("STATE_INACTIVE", "STATE_FAILED"):
        raise CliError(f"{name} ({step.desired['display_name']}) is "
                       f"{step.existing.get('state')}: stop it before applying a change "
                       f"(`oih flows stop {name}`)", CONFLICT)
    body = {**{k: step.desired.get(k) for k in step.changed}, "etag": step.existing.get("etag")}
    body = {k: v for k, v in body.items() if v is not None}
    path = f"/v1/{quote_name(name)}?update_mask={','.join(step.changed)}"
    client.call("PATCH", path, body, what=f"update {name}")
    return f"{name} configured ({', '.join(step.changed)})"


@click.command()
@click.option("-f", "--filename", "paths", multiple=True, required=True,
              type=click.Path(path_type=Path), help="a flow file or a folder of them")
@click.option("--dry-run", is_flag=True, help="show what would change as a diff; send nothing")
@click.pass_context
def apply(ctx: click.Context, paths: tuple[Path, ...], dry_run: bool) -> None:
    """Create or update flows from YAML files, keyed by display name (idempotent)."""
    client = platform(ctx)
    plans = plan(client, paths)
    for step in plans:
        if dry_run:
            if step.action == "unchanged":
                click.echo(f"{step.existing.get('name')} unchanged "
                           f"({step.desired['display_name']})")
            else:
                click.echo(f"would {step.action} {step.desired['display_name']}")
                click.echo(diff(step), nl=False)
        else:
            click.echo(apply_plan(client, step))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "flow"


def exported(flow: dict[str, Any], schema: FlowSchema, components: Components) -> dict[str, Any]:
    result = managed_part(flow, schema)
    for node in ((result.get("graph") or {}).get("nodes")) or []:
        if node.get("component"):
            node["component"] = components.display(node["component"])
    return result


@click.command("export")
@click.argument("names", nargs=-1)
@click.option("-d", "--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("flows"), show_default=True, help="where to write the files")
@click.pass_context
def export(ctx: click.Context, names: tuple[str, ...], directory: Path) -> None:
    """Write flows (all you see, or the named ones) as YAML files that `apply` reads."""
    client = platform(ctx)
    schema = fetch_schema(client)
    components = Components(client)
    if names:
        flows = [client.call("GET", "/v1/" + quote_name(n if "/" in n else f"flows/{n}"),
                             what=f"get {n}") for n in names]
    else:
        flows = list(client.list_all("/v1/flows", "flows", page_size=100))
    directory.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for flow in flows:
        stem = slug(flow.get("display_name", ""))
        if stem in used:
            stem += "-" + flow["name"].rsplit("/", 1)[-1][:8]
        used.add(stem)
        target = directory / f"{stem}.yaml"
        target.write_text(f"# {flow['name']}, exported by `oih export`; apply with "
                          f"`oih apply -f {directory}`\n" + as_yaml(exported(flow, schema,
                                                                             components)))
        click.echo(f"{flow['name']} -> {target}")


COMMANDS = [apply, export]
