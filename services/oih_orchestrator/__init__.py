"""The Component Orchestrator: runs started flows (topology, broker users, workers)."""
