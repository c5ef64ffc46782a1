"""`python -m oih_snapshots`: run the Snapshots service until SIGTERM/SIGINT."""

from oih_runtime import logs, server, settings
from oih_snapshots.server import build


def main() -> None:
    config = settings.load("snapshots")
    logs.configure("snapshots", config.log_level)
    built = build(config)
    server.serve(config, built.service, built.start_background)


if __name__ == "__main__":
    main()
