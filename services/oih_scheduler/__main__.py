"""`python -m oih_scheduler`: run the Scheduler until SIGTERM/SIGINT. Run as many replicas as
you like against one PostgreSQL database: each tick fires once (see oih_scheduler.firing)."""

from oih_runtime import logs, server, settings
from oih_scheduler.server import build
from oih_scheduler.settings import SchedulerSettings


def main() -> None:
    config = settings.load("scheduler")
    logs.configure("scheduler", config.log_level)
    built = build(config, SchedulerSettings.from_env())
    server.serve(config, built.service, built.start_background)


if __name__ == "__main__":
    main()
