"""The Scheduler: cron triggers of active flows (see proto/oih/scheduler/v1)."""
