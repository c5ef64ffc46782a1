"""`python -m oih_components`: run the Component Repository until SIGTERM/SIGINT."""

from oih_components.server import build
from oih_runtime import logs, server, settings


def main() -> None:
    config = settings.load("components")
    logs.configure("components", config.log_level)
    built = build(config)
    server.serve(config, built.service, built.start_bus)


if __name__ == "__main__":
    main()
