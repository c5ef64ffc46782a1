"""Tests of the Component Orchestrator."""
