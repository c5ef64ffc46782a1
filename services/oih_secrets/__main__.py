"""`python -m oih_secrets`: run the Secrets service until SIGTERM/SIGINT."""

from oih_runtime import logs, server, settings
from oih_secrets.server import build


def main() -> None:
    config = settings.load("secrets")
    logs.configure("secrets", config.log_level)
    built = build(config)
    server.serve(config, built.service, built.start_bus)


if __name__ == "__main__":
    main()
