"""The operator commands of `oih`: log in, read and change resources over REST.

Every command talks to the gateway with the token `oih login` saved (see config.py). Errors are
one line on stderr and an exit code from client.py (0 ok, 1 platform error, 2 usage or invalid
input, 3 not found, 4 not logged in or not allowed, 5 conflict).
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.live import Live
from rich.table import Table

from oih_cli import config as config_module
from oih_cli import output
from oih_cli.client import USAGE, CliError, Platform, quote_name
from oih_cli.output import FORMATS, emit, short_enum, table
from oih_cli.resources import RESOURCES, Resource, resource

F = TypeVar("F", bound=Callable[..., Any])

#: Execution states after which nothing changes any more.
FINAL_STATES = {"STATE_SUCCEEDED", "STATE_FAILED"}


def output_option(default: str = "table") -> Callable[[F], F]:
    return click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default=default,
                        show_default=True, help="how to print the result")


def platform(ctx: click.Context) -> Platform:
    """The platform of the saved login (created once per command)."""
    root = ctx.find_root()
    if not isinstance(root.obj, Platform):
        config = config_module.load()
        if root.params.get("gateway"):
            config.gateway = root.params["gateway"]
        root.obj = Platform(config)
    return root.obj


def read_secret(prompt: str, from_stdin: bool, env: str) -> str:
    import os

    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if os.environ.get(env):
        return os.environ[env]
    if not sys.stdin.isatty():
        raise CliError(f"no {prompt.lower()}: use --password-stdin or set ${env}", USAGE)
    return getpass.getpass(f"{prompt}: ")


# --------------------------------------------------------------------------------------------
# login


@click.command()
@click.option("--gateway", "gateway_url", help="gateway URL (default: the saved one, or "
              f"{config_module.DEFAULT_GATEWAY})")
@click.option("--username", "-u", help="log in as this user (password from the prompt, "
              "--password-stdin or $OIH_PASSWORD)")
@click.option("--client-id", help="log in as this service account (secret from the prompt, "
              "--password-stdin or $OIH_CLIENT_SECRET); its token is renewed automatically")
@click.option("--password-stdin", is_flag=True, help="read the password or secret from stdin")
def login(gateway_url: str | None, username: str | None, client_id: str | None,
          password_stdin: bool) -> None:
    """Log in and keep the gateway URL and token in the config file (mode 0600)."""
    config = config_module.load()
    if gateway_url:
        config.gateway = gateway_url.rstrip("/")
    if bool(username) == bool(client_id):
        raise CliError("give exactly one of --username or --client-id", USAGE)
    anonymous = Platform(config, save_renewed=False)
    if username:
        password = read_secret("Password", password_stdin, "OIH_PASSWORD")
        token = anonymous.call("POST", "/v1/login", {"username": username, "password": password},
                               what="log in", authenticated=False)
        config.client_id = config.client_secret = ""
        config.principal = username
    else:
        secret = read_secret("Client secret", password_stdin, "OIH_CLIENT_SECRET")
        token = anonymous.call("POST", "/v1/tokens:exchange",
                               {"client_id": client_id, "client_secret": secret},
                               what="log in", authenticated=False)
        config.client_id, config.client_secret = client_id or "", secret
        config.principal = client_id or ""
    config.token = token["access_token"]
    config.expires_at = time.time() + int(token.get("expires_in") or 0)
    me = Platform(config, save_renewed=False).get("/v1/users/me")
    path = config_module.save(config)
    click.echo(f"logged in to {config.gateway} as {me.get('name')} "
               f"({me.get('tenant') or 'platform'}); config in {path}")


@click.command()
def logout() -> None:
    """Forget the saved token (and a service account's secret)."""
    config = config_module.load()
    config.token, config.expires_at = "", 0.0
    config.client_id = config.client_secret = config.principal = ""
    click.echo(f"logged out; {config_module.save(config)} keeps only the gateway URL")


@click.command()
@output_option("yaml")
@click.pass_context
def whoami(ctx: click.Context, fmt: str) -> None:
    """Show the logged-in principal, its tenant and permissions."""
    me = platform(ctx).get("/v1/users/me")
    if fmt == "table":
        table([me], (("NAME", "name"), ("TENANT", "tenant"), ("TYPE", "type"),
                     ("PERMISSIONS", "permissions")), enums=("type",))
    else:
        emit(me, fmt)


# --------------------------------------------------------------------------------------------
# get / list / describe / delete, for every resource of resources.py

RESOURCE_HELP = "one of: " + ", ".join(r.plural for r in RESOURCES)


def _list(ctx: click.Context, kind: Resource, fmt: str, filter_: str | None,
          order_by: str | None, limit: int) -> None:
    items = list(platform(ctx).list_all(kind.path, kind.list_key, limit=limit,
                                        filter=filter_, order_by=order_by))
    if fmt == "table":
        if not items:
            click.echo(f"No {kind.plural}.", err=True)
            return
        table(items, kind.columns, enums=kind.enums)
    else:
        emit(items, fmt)


def _get(ctx: click.Context, kind: Resource, name: str) -> Any:
    return platform(ctx).call("GET", "/v1/" + quote_name(kind.name_of(name)),
                              what=f"get {kind.name_of(name)}")


@click.command("get")
@click.argument("kind", metavar="RESOURCE")
@click.argument("names", nargs=-1)
@output_option()
@click.option("--filter", "filter_", help="a filter expression, e.g. 'state=ACTIVE'")
@click.option("--order-by", help="e.g. 'create_time desc'")
@click.option("--limit", type=int, default=0, help="at most this many (0: all)")
@click.pass_context
def get(ctx: click.Context, kind: str, names: tuple[str, ...], fmt: str,
        filter_: str | None, order_by: str | None, limit: int) -> None:
    """List RESOURCE, or get the named ones. RESOURCE is """
    found = resource(kind)
    if not names:
        _list(ctx, found, fmt, filter_, order_by, limit)
        return
    items = [_get(ctx, found, name) for name in names]
    if fmt == "table":
        table(items, found.columns, enums=found.enums)
    else:
        emit(items[0] if len(items) == 1 else items, fmt)


get.help = (get.help or "") + RESOURCE_HELP + "."


@click.command("list")
@click.argument("kind", metavar="RESOURCE")
@output_option()
@click.option("--filter", "filter_", help="a filter expression, e.g. 'state=ACTIVE'")
@click.option("--order-by", help="e.g. 'create_time desc'")
@click.option("--limit", type=int, default=0, help="at most this many (0: all)")
@click.pass_context
def list_(ctx: click.Context, kind: str, fmt: str, filter_: str | None, order_by: str | None,
          limit: int) -> None:
    """List RESOURCE (every page). RESOURCE is """
    _list(ctx, resource(kind), fmt, filter_, order_by, limit)


list_.help = (list_.help or "") + RESOURCE_HELP + "."


@click.command()
@click.argument("kind", metavar="RESOURCE")
@click.argument("name")
@output_option("yaml")
@click.pass_context
def describe(ctx: click.Context, kind: str, name: str, fmt: str) -> None:
    """Show every field of one object (YAML by default)."""
    found = resource(kind)
    item = _get(ctx, found, name)
    if fmt == "table":
        table([item], found.columns, enums=found.enums)
    else:
        emit(item, fmt)


@click.command()
@click.argument("kind", metavar="RESOURCE")
@click.argument("names", nargs=-1, required=True)
@click.pass_context
def delete(ctx: click.Context, kind: str, names: tuple[str, ...]) -> None:
    """Delete the named objects of RESOURCE."""
    found = resource(kind)
    for name in names:
        full = found.name_of(name)
        platform(ctx).call("DELETE", "/v1/" + quote_name(full), what=f"delete {full}")
        click.echo(f"deleted {full}")


# --------------------------------------------------------------------------------------------
# flows start|stop|execute


def flow_name(ref: str) -> str:
    return resource("flows").name_of(ref)


@click.group()
def flows() -> None:
    """Start, stop and run flows."""


def _transition(ctx: click.Context, verb: str, ref: str, fmt: str) -> None:
    name = flow_name(ref)
    flow = platform(ctx).call("POST", f"/v1/{quote_name(name)}:{verb}", {}, what=f"{verb} {name}")
    if fmt == "table":
        click.echo(f"{name} {short_enum(flow.get('state'))}")
    else:
        emit(flow, fmt)


@flows.command()
@click.argument("name")
@output_option()
@click.pass_context
def start(ctx: click.Context, name: str, fmt: str) -> None:
    """Start a flow (STARTING, then ACTIVE once every step's worker runs)."""
    _transition(ctx, "start", name, fmt)


@flows.command()
@click.argument("name")
@output_option()
@click.pass_context
def stop(ctx: click.Context, name: str, fmt: str) -> None:
    """Stop a flow (works from every state)."""
    _transition(ctx, "stop", name, fmt)


def _json_argument(text: str | None, file: Path | None) -> Any:
    if text is not None and file is not None:
        raise CliError("give --data or --data-file, not both", USAGE)
    raw = file.read_text() if file is not None else text
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise CliError(f"--data is not JSON: {error}", USAGE) from error
    if not isinstance(value, dict):
        raise CliError("--data must be a JSON object", USAGE)
    return value


@flows.command()
@click.argument("name")
@click.option("--data", help="the message's data, a JSON object")
@click.option("--data-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="read the data from a JSON file")
@click.option("--watch", "watch_", is_flag=True, help="then follow the execution until it ends")
@output_option()
@click.pass_context
def execute(ctx: click.Context, name: str, data: str | None, data_file: Path | None,
            watch_: bool, fmt: str) -> None:
    """Run an ACTIVE flow once with a payload; prints the execution's name."""
    full = flow_name(name)
    body = {"data": _json_argument(data, data_file)}
    reply = platform(ctx).call("POST", f"/v1/{quote_name(full)}:execute", body,
                               what=f"execute {full}")
    if fmt == "table":
        click.echo(reply["execution"])
    else:
        emit(reply, fmt)
    if watch_:
        ctx.exit(_watch(ctx, reply["execution"], interval=0.5, timeout=0.0))


# --------------------------------------------------------------------------------------------
# executions list|show|watch

STEP_COLUMNS = (("STEP", "step_id"), ("IN", "messages_in"), ("OUT", "messages_out"),
                ("ROUTED", "messages_routed"), ("ERRORS", "errors"),
                ("DEAD", "dead_lettered"), ("LAST ERROR", "last_error.message"))


@click.group()
def executions() -> None:
    """Follow a flow's executions: per-step counts and samples."""


@executions.command("list")
@click.argument("flow")
@output_option()
@click.option("--limit", type=int, default=20, show_default=True, help="0: all")
@click.pass_context
def executions_list(ctx: click.Context, flow: str, fmt: str, limit: int) -> None:
    """List a flow's executions, newest first."""
    path = f"/v1/{quote_name(flow_name(flow))}/executions"
    items = list(platform(ctx).list_all(path, "executions", limit=limit))
    if fmt != "table":
        emit(items, fmt)
    elif not items:
        click.echo("No executions.", err=True)
    else:
        table(items, (("NAME", "name"), ("STATE", "state"), ("SOURCE", "source"),
                      ("VERSION", "flow_version"), ("CREATED", "create_time"),
                      ("ENDED", "end_time")), enums=("state",))


def execution_name(ref: str) -> str:
    if "/executions/" not in ref:
        raise CliError(f"{ref!r} is not an execution name (flows/…/executions/…)", USAGE)
    return ref


def _show(execution: dict[str, Any], samples: bool) -> None:
    click.echo(f"{execution.get('name')}  {short_enum(execution.get('state'))}  "
               f"source={execution.get('source') or '-'}  "
               f"created={execution.get('create_time') or '-'}  "
               f"ended={execution.get('end_time') or '-'}")
    table(execution.get("steps") or [], STEP_COLUMNS)
    if samples:
        for step in execution.get("steps") or []:
            for kind in ("input_samples", "output_samples"):
                for sample in step.get(kind) or []:
                    click.echo(f"{step.get('step_id')} {kind.split('_')[0]}: "
                               f"{json.dumps(sample, ensure_ascii=False)}")


@executions.command("show")
@click.argument("execution")
@output_option()
@click.option("--samples/--no-samples", default=True, show_default=True,
              help="print each step's input and output samples")
@click.pass_context
def executions_show(ctx: click.Context, execution: str, fmt: str, samples: bool) -> None:
    """Show an execution: state, and each step's counts and samples."""
    found = platform(ctx).call("GET", "/v1/" + quote_name(execution_name(execution)),
                               what=f"get {execution}")
    if fmt == "table":
        _show(found, samples)
    else:
        emit(found, fmt)


def _progress(execution: dict[str, Any]) -> Table:
    grid = Table(title=f"{execution.get('name')}  {short_enum(execution.get('state'))}",
                 box=None, header_style="bold", title_justify="left")
    for title, _path in STEP_COLUMNS:
        grid.add_column(title)
    for step in execution.get("steps") or []:
        grid.add_row(*(output.cell(output.field(step, path)) for _t, path in STEP_COLUMNS))
    return grid


def _watch(ctx: click.Context, name: str, *, interval: float, timeout: float) -> int:
    """Redraw the execution's progress until it ends; 0 if it succeeded, 1 if it failed."""
    client = platform(ctx)
    path = "/v1/" + quote_name(execution_name(name))
    deadline = time.monotonic() + timeout if timeout else None
    live_output = output.console.is_terminal
    last = ""
    with Live(console=output.console, auto_refresh=False, transient=False) as live:
        while True:
            try:
                execution = client.call("GET", path, what=f"get {name}")
            except CliError as error:
                # The orchestrator learns of a new execution from the first report: not yet.
                if error.exit_code != 3 or (deadline and time.monotonic() > deadline):
                    raise
                execution = {"name": name, "state": "STATE_PENDING", "steps": []}
            if live_output:
                live.update(_progress(execution), refresh=True)
            else:  # piped: one line per change instead of redrawing
                line = " ".join(f"{s.get('step_id')}:{s.get('messages_in')}/"
                                f"{s.get('messages_out')}" for s in execution.get("steps") or [])
                state = short_enum(execution.get("state"))
                if f"{state} {line}" != last:
                    last = f"{state} {line}"
                    click.echo(f"{state} {line}".rstrip())
            if execution.get("state") in FINAL_STATES:
                return 0 if execution["state"] == "STATE_SUCCEEDED" else 1
            if deadline and time.monotonic() > deadline:
                raise CliError(f"{name} did not end within {timeout:g}s", 1)
            time.sleep(interval)


@executions.command("watch")
@click.argument("execution")
@click.option("--interval", type=float, default=0.5, show_default=True, help="seconds")
@click.option("--timeout", type=float, default=0.0, help="give up after this many seconds "
              "(0: never)")
@click.pass_context
def executions_watch(ctx: click.Context, execution: str, interval: float, timeout: float) -> None:
    """Show an execution's progress live until it ends (exit 0 succeeded, 1 failed)."""
    ctx.exit(_watch(ctx, execution, interval=interval, timeout=timeout))


# --------------------------------------------------------------------------------------------
# dead-letters list|replay


@click.group("dead-letters")
def dead_letters() -> None:
    """Messages a flow step gave up on: list them, replay them from the failed step."""


@dead_letters.command("list")
@click.argument("flow")
@output_option()
@click.pass_context
def dead_letters_list(ctx: click.Context, flow: str, fmt: str) -> None:
    """List a flow's dead letters."""
    path = f"/v1/{quote_name(flow_name(flow))}/deadLetters"
    items = list(platform(ctx).list_all(path, "dead_letters"))
    if fmt != "table":
        emit(items, fmt)
    elif not items:
        click.echo("No dead letters.", err=True)
    else:
        table(items, (("NAME", "name"), ("STEP", "step_id"), ("EXECUTION", "execution"),
                      ("ERROR", "error.message"), ("CREATED", "create_time")))


@dead_letters.command("replay")
@click.argument("names", nargs=-1, required=True)
@output_option()
@click.pass_context
def dead_letters_replay(ctx: click.Context, names: tuple[str, ...], fmt: str) -> None:
    """Send dead letters back to the step that failed them."""
    for name in names:
        if "/deadLetters/" not in name:
            raise CliError(f"{name!r} is not a dead letter name (flows/…/deadLetters/…)", USAGE)
        reply = platform(ctx).call("POST", f"/v1/{quote_name(name)}:replay", {},
                                   what=f"replay {name}")
        if fmt == "table":
            click.echo(f"replayed {name} in {reply.get('name')}")
        else:
            emit(reply, fmt)


COMMANDS = [login, logout, whoami, get, list_, describe, delete, flows, executions, dead_letters]
