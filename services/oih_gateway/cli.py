"""`python -m oih_gateway` and `oih gateway` (`render|check|docs|validate`): the gateway's
rendered files.

- `render`: `gateway/envoy.yaml` (the default local layout, services/oih_gateway/layout.py:
  Envoy on :8080, admin on 127.0.0.1:9901, each package's service on 127.0.0.1:<its default
  port>) and `gateway/openapi.json`; also writes the API docs folder the config names
  (`var/api-docs`), so Envoy can run the committed config from the repository root.
- `check`: exit 1 when `gateway/envoy.yaml` or `gateway/openapi.json` is stale (scripts/test).
- `docs OUT`: write the API docs files (OpenAPI document, Swagger UI page) into OUT.
- `validate [FILE]`: check a config with `envoy --mode validate`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from oih_gateway import layout
from oih_gateway.docs import write_docs
from oih_gateway.envoy import EnvoyError, validate
from oih_gateway.openapi import dumps_openapi, render_openapi
from oih_gateway.render import (
    dumps_envoy_config,
    read_rpcs,
    render_envoy_config,
    write_envoy_config,
)


def default_render_options(descriptor_set: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    """The upstreams and options of the default local layout for a descriptor set."""
    services = sorted({rpc.service for rpc in read_rpcs(descriptor_set)})
    upstreams = layout.default_upstreams(services)
    options: dict[str, Any] = {
        "listen_host": layout.LISTEN_HOST,
        "listen_port": layout.LISTEN_PORT,
        "admin_port": layout.ADMIN_PORT,
        "descriptor_path": layout.DESCRIPTOR_SET_RELATIVE,
        "issuer": layout.ISSUER,
        "audience": layout.AUDIENCE,
        "docs_dir": layout.DOCS_DIR_RELATIVE,
    }
    return upstreams, options


def render_default(descriptor_set: bytes) -> dict[str, Any]:
    """The config `render` writes, as a dict (the stale check compares against it)."""
    upstreams, options = default_render_options(descriptor_set)
    return render_envoy_config(descriptor_set, upstreams, **options)


def stale_files(descriptor_set: bytes) -> list[Path]:
    """The committed rendered files that differ from a fresh render."""
    expected = {
        layout.ENVOY_CONFIG: dumps_envoy_config(render_default(descriptor_set)),
        layout.OPENAPI: dumps_openapi(render_openapi(descriptor_set)),
    }
    return [path for path, text in expected.items()
            if not path.exists() or path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oih_gateway", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="render the Envoy config and the OpenAPI document")
    render.add_argument("--out", type=Path, default=layout.ENVOY_CONFIG)
    render.add_argument("--openapi-out", type=Path, default=layout.OPENAPI)
    render.add_argument("--descriptor-set", type=Path, default=layout.DESCRIPTOR_SET)
    render.add_argument("--no-validate", action="store_true", help="skip envoy --mode validate")
    commands.add_parser("check", help="exit 1 when a committed rendered file is stale")
    docs = commands.add_parser("docs", help="write the API docs files into a folder")
    docs.add_argument("out", type=Path)
    check = commands.add_parser("validate", help="check a config with envoy --mode validate")
    check.add_argument("config", type=Path, nargs="?", default=layout.ENVOY_CONFIG)
    args = parser.parse_args(argv)

    if args.command == "validate":
        try:
            validate(args.config, cwd=layout.ROOT)
        except EnvoyError as error:
            print(error, file=sys.stderr)
            return 1
        print(f"{args.config}: OK")
        return 0
    if args.command == "check":
        stale = stale_files(layout.DESCRIPTOR_SET.read_bytes())
        for path in stale:
            print(f"stale: {path.relative_to(layout.ROOT)} (run `python -m oih_gateway render`)",
                  file=sys.stderr)
        return 1 if stale else 0
    if args.command == "docs":
        openapi = dumps_openapi(render_openapi(layout.DESCRIPTOR_SET.read_bytes()))
        print(f"wrote {write_docs(args.out, openapi)}")
        return 0

    descriptor_set = args.descriptor_set.read_bytes()
    upstreams, options = default_render_options(descriptor_set)
    if args.descriptor_set.resolve() != layout.DESCRIPTOR_SET:
        options["descriptor_path"] = str(args.descriptor_set.resolve())
    services = {rpc.service for rpc in read_rpcs(descriptor_set)}
    for service in sorted(services - set(upstreams)):
        print(f"warning: no default port for {service}; not exposed", file=sys.stderr)
    write_envoy_config(args.out, descriptor_set, upstreams, **options)
    openapi = dumps_openapi(render_openapi(descriptor_set))
    args.openapi_out.write_text(openapi)
    write_docs(layout.ROOT / layout.DOCS_DIR_RELATIVE, openapi)
    print(f"wrote {args.out} ({len(upstreams)} services), {args.openapi_out} and "
          f"{layout.DOCS_DIR_RELATIVE}/")
    if not args.no_validate:
        try:
            validate(args.out, cwd=layout.ROOT)
        except EnvoyError as error:
            print(error, file=sys.stderr)
            return 1
    return 0

