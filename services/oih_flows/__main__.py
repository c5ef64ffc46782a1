"""`python -m oih_flows`: run the Flow Repository until SIGTERM/SIGINT."""

from oih_flows.server import build
from oih_flows.settings import FlowsSettings
from oih_runtime import logs, server, settings


def main() -> None:
    config = settings.load("flows")
    logs.configure("flows", config.log_level)
    built = build(config, FlowsSettings.from_env())
    server.serve(config, built.service, built.start_background)


if __name__ == "__main__":
    main()
