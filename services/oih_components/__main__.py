"""`python -m oih_components`: run the Component Repository until SIGTERM/SIGINT."""

from oih_components.server import build
from oih_runtime import logs, server, settings


def main() -> None:
    config = settings.load("components")
    logs.configure("components", config.log_level)
    built = build(config)
    built.start_bus()
    running = server.start(built.service, host=config.host, port=config.port,
                           max_workers=config.max_workers, grace=config.grace_seconds)
    server.run_until_signalled(running)


if __name__ == "__main__":
    main()
