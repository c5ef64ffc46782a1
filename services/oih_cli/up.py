"""`oih up`: start the platform, print where it listens, run until Ctrl-C, stop cleanly."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from oih_cli import demo
from oih_cli.platform import (
    MASTER_KEY_SERVICES,
    Platform,
    PlatformError,
    implemented_services,
    write_private,
)
from oih_gateway import layout
from oih_runtime import logs
from oih_runtime.settings import configured_ports


def admin_password(data_dir: Path) -> str:
    """$OIH_IAM_ADMIN_PASSWORD, or one generated on first start and kept in the data dir."""
    if os.environ.get("OIH_IAM_ADMIN_PASSWORD"):
        return os.environ["OIH_IAM_ADMIN_PASSWORD"]
    path = data_dir / "admin-password"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        write_private(path, secrets.token_urlsafe(18))
    return path.read_text().strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oih up", description=__doc__)
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("OIH_DATA_DIR", "var")))
    parser.add_argument("--gateway-port", type=int,
                        default=int(os.environ.get("OIH_GATEWAY_PORT", str(layout.LISTEN_PORT))))
    parser.add_argument("--admin-port", type=int, help="Envoy's admin port (loopback only)",
                        default=int(os.environ.get("OIH_GATEWAY_ADMIN_PORT",
                                                   str(layout.ADMIN_PORT))))
    parser.add_argument("--demo", action="store_true",
                        help="run the seed scenarios once the platform is up")
    parser.add_argument("--exit-after-demo", action="store_true",
                        help="stop the platform after the demo (for CI and smoke checks)")
    args = parser.parse_args(argv)
    logs.configure("oih-up", os.environ.get("OIH_LOG_LEVEL", "WARNING"))

    data_dir = args.data_dir.resolve()
    username = os.environ.get("OIH_IAM_ADMIN_USERNAME", "admin@oih.local")
    password = admin_password(data_dir)
    extra_env = {"OIH_IAM_ADMIN_PASSWORD": password, "OIH_IAM_ADMIN_USERNAME": username}
    if args.demo:  # the scheduled scenario polls a feed the demo serves on this address
        extra_env["OIH_EGRESS_ALLOWED_NETWORKS"] = ",".join(
            filter(None, [os.environ.get("OIH_EGRESS_ALLOWED_NETWORKS", ""),
                          f"{demo.DEMO_FEED_HOST}/32"]))
    platform = Platform(data_dir=data_dir, gateway_port=args.gateway_port,
                        admin_port=args.admin_port, ports=configured_ports(),
                        extra_env=extra_env)
    print(f"starting {', '.join(platform.services)} and Envoy (logs in {platform.log_dir})",
          flush=True)
    try:
        platform.start()
    except PlatformError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\nThe platform is up:")
    print(f"  REST and gRPC gateway   {platform.gateway_url} (Envoy admin on "
          f"127.0.0.1:{platform.admin_port})")
    for service in platform.services:
        print(f"  {service:<22}  grpc://{platform.address(service)}")
    print(f"  RabbitMQ                {platform.rabbitmq_url.split('@')[-1]}"
          f"{' (private node)' if platform.private_broker else ''}")
    print(f"  platform admin          {username} (password in {data_dir / 'admin-password'}"
          f"{', or $OIH_IAM_ADMIN_PASSWORD' if os.environ.get('OIH_IAM_ADMIN_PASSWORD') else ''})")
    keys = [platform.data_dir / f"{s}-master-key" for s in MASTER_KEY_SERVICES
            if s in platform.services and (platform.data_dir / f"{s}-master-key").exists()]
    if keys:
        print(f"  master keys             {', '.join(str(k) for k in keys)} (back them up)")
    not_yet = sorted(set(implemented_services()) ^ set(platform.services))
    if not_yet:
        print(f"  not started: {', '.join(not_yet)}")
    status = 0
    try:
        if args.demo:
            print()
            try:
                demo.run(platform.gateway_url, username, password)
            except Exception as error:  # the demo reports, the platform keeps running
                print(f"demo failed: {error}", file=sys.stderr)
                status = 1
        if not args.exit_after_demo:
            print("\nPress Ctrl-C to stop.", flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            stop.wait()
    finally:
        print("stopping…", flush=True)
        platform.stop()
        print("stopped.")
    logging.shutdown()
    return status
