"""The Flow Repository: integration flows (graphs of component functions) and their lifecycle."""
