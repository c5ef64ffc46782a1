"""`python -m oih_webhooks`: run the Webhooks service until SIGTERM/SIGINT."""

from oih_runtime import logs, server, settings
from oih_webhooks.server import build
from oih_webhooks.settings import WebhooksSettings


def main() -> None:
    config = settings.load("webhooks")
    logs.configure("webhooks", config.log_level)
    built = build(config, WebhooksSettings.from_env())
    server.serve(config, built.service, built.start_background)


if __name__ == "__main__":
    main()
