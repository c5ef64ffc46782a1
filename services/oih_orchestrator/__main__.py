"""`python -m oih_orchestrator`: run the Component Orchestrator until SIGTERM/SIGINT.

The workers it started keep running when it stops; the next start adopts them."""

from oih_orchestrator.server import build
from oih_orchestrator.settings import OrchestratorSettings
from oih_runtime import logs, server, settings


def main() -> None:
    config = settings.load("orchestrator")
    logs.configure("orchestrator", config.log_level)
    built = build(config, OrchestratorSettings.from_env(amqp_url=config.rabbitmq_url))
    server.serve(config, built.service, built.start_background)


if __name__ == "__main__":
    main()
