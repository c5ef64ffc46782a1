"""`python -m oih_iam`: run the IAM service until SIGTERM/SIGINT."""

from oih_iam.server import build
from oih_iam.settings import IamSettings
from oih_runtime import logs, server, settings


def main() -> None:
    config = settings.load("iam")
    logs.configure("iam", config.log_level)
    built = build(config, IamSettings.from_env())
    running = server.start(built.service, host=config.host, port=config.port,
                           max_workers=config.max_workers, grace=config.grace_seconds)
    built.start_background()
    server.run_until_signalled(running)


if __name__ == "__main__":
    main()
