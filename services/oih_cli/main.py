"""`oih`: the platform's command line.

    oih up [--demo]                   run every implemented service and Envoy, until Ctrl-C
    oih demo [--gateway URL]          run the seed scenarios against a running platform
    oih events dead-letters SERVICE   list a service's dead-lettered events
    oih events replay SERVICE [--id]  send them back to the service
    oih gateway render|validate       render or check the Envoy config
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="oih", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "demo", "events", "gateway"])
    if not args or args[0] in ("-h", "--help"):
        parser.print_help()
        print(__doc__)
        return 0
    command, rest = args[0], args[1:]
    if command == "up":
        from oih_cli import up

        return up.main(rest)
    if command == "demo":
        from oih_cli import demo

        return demo.main(rest)
    if command == "events":
        from oih_runtime.bus import cli

        return cli.main(rest)
    if command == "gateway":
        from oih_gateway.__main__ import main as gateway_main

        return gateway_main(rest)
    parser.error(f"unknown command {command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
