"""The Snapshots service: the state a flow step keeps between runs (see proto/oih/snapshots/v1)."""
