"""`oih events dead-letters <service>` and `oih events replay <service> [--id ID]`: the event
bus's dead letters, read and replayed through `oih_runtime.bus.dead_letters`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import pika.exceptions

from oih_runtime.bus.dead_letters import (
    NoDeadLetterQueue,
    list_dead_letters,
    replay_dead_letters,
)
from oih_runtime.bus.topology import rabbitmq_url, redact_url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oih events",
                                     description="Inspect and replay dead-lettered events.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None,
                        help="RabbitMQ URL (default: $OIH_RABBITMQ_URL or the local broker)")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("dead-letters", parents=[common],
                                  help="list a service's dead letters")
    listing.add_argument("service")
    listing.add_argument("--limit", type=int, default=None)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    replay = commands.add_parser("replay", parents=[common],
                                 help="send dead letters back to the service's queue")
    replay.add_argument("service")
    replay.add_argument("--id", dest="ids", action="append", metavar="ID",
                        help="replay only this message id (repeatable); default: all")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    url = args.url or rabbitmq_url()
    try:
        if args.command == "dead-letters":
            letters = list_dead_letters(args.service, url=url, limit=args.limit)
            for letter in letters:
                if args.json:
                    print(json.dumps({
                        "id": letter.id, "type": letter.event_type, "attempts": letter.attempts,
                        "dead_at": letter.dead_at.isoformat() if letter.dead_at else None,
                        "error": letter.error, "source": letter.source, "tenant": letter.tenant,
                        "subject": letter.subject, "replays": letter.replays,
                    }))
                else:
                    first_line = letter.error.splitlines()[-1] if letter.error else ""
                    dead_at = letter.dead_at.isoformat(timespec="seconds") if letter.dead_at else "-"
                    print(f"{letter.id}\t{letter.event_type or '-'}\t{letter.attempts}\t"
                          f"{dead_at}\t{first_line}")
            if not args.json:
                print(f"{len(letters)} dead letter(s) for {args.service}", file=sys.stderr)
        else:
            count = replay_dead_letters(args.service, args.ids, url=url)
            print(f"replayed {count} message(s) to oih.{args.service}.events")
    except NoDeadLetterQueue as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except pika.exceptions.AMQPConnectionError as exc:
        print(f"error: cannot reach RabbitMQ at {redact_url(url)}: {exc!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
