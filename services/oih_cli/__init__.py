"""The `oih` command: run the platform, and operate it."""
