"""`oih`: the platform's command line.

Operate a running platform over REST (log in once, then kubectl/gh style):

\b
    oih login --username admin@oih.local          keep the gateway URL and a token (0600)
    oih get flows | oih get flow NAME -o yaml     list or get tenants, users, service-accounts,
    oih describe flow NAME | oih delete flow NAME   roles, components, flows, schedules, secrets
    oih flows start|stop|execute NAME             control flows
    oih executions list|show|watch ...            per-step counts and samples, live progress
    oih dead-letters list FLOW | replay NAME      failed messages
    oih apply -f flows/ [--dry-run] | oih export  flows as YAML files

Run the platform on this machine:

\b
    oih up [--demo]                   every implemented service and Envoy, until Ctrl-C
    oih demo [--gateway URL]          the seed scenarios against a running platform
    oih events dead-letters|replay    the event bus's dead letters
    oih gateway render|check|docs|validate   the gateway's rendered files
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from oih_cli import commands, gitops
from oih_cli.client import CliError

_PASSTHROUGH = {"context_settings": {"ignore_unknown_options": True, "allow_extra_args": True,
                                     "help_option_names": []}}


class Oih(click.Group):
    """Prints a CliError as one line and exits with its code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as error:
            click.echo(f"error: {error}", err=True)
            ctx.exit(error.exit_code)


@click.group(cls=Oih, help=__doc__, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--gateway", envvar="OIH_GATEWAY", help="gateway URL (default: from `oih login`)")
def cli(gateway: str | None) -> None:
    pass


def _passthrough(name: str, run: Callable[[list[str]], int], help_text: str) -> None:
    @cli.command(name, help=help_text, **_PASSTHROUGH)
    @click.pass_context
    def command(ctx: click.Context) -> None:
        ctx.exit(run(list(ctx.args)))


def _up(args: list[str]) -> int:
    from oih_cli import up

    return up.main(args)


def _demo(args: list[str]) -> int:
    from oih_cli import demo

    return demo.main(args)


def _events(args: list[str]) -> int:
    from oih_cli import events

    return events.main(args)


def _gateway(args: list[str]) -> int:
    from oih_gateway import cli as gateway_cli

    return gateway_cli.main(args)


_passthrough("up", _up, "Run the platform on this machine until Ctrl-C (`oih up --help`).")
_passthrough("demo", _demo, "Run the seed scenarios against a running platform.")
_passthrough("events", _events, "The event bus's dead letters: `dead-letters|replay SERVICE`.")
_passthrough("gateway", _gateway, "The gateway's rendered files: `render|check|docs|validate`.")
for _command in (*commands.COMMANDS, *gitops.COMMANDS):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        # Not standalone: click hands back the code of `ctx.exit(code)` instead of exiting.
        result = cli.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="oih",
                          standalone_mode=False)
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.Abort:
        click.echo("aborted", err=True)
        return 1
    except CliError as error:
        click.echo(f"error: {error}", err=True)
        return error.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
