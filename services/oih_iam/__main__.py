"""`python -m oih_iam`: run the IAM service until SIGTERM/SIGINT."""

from oih_iam.server import build
from oih_iam.settings import IamSettings
from oih_runtime import logs, server, settings


def main() -> None:
    config = settings.load("iam")
    logs.configure("iam", config.log_level)
    built = build(config, IamSettings.from_env())
    server.serve(config, built.service, built.start_background)


if __name__ == "__main__":
    main()
