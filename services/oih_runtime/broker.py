"""Moved to `oih_cli.broker` (developer tooling lives with the CLI, not in the runtime).

Kept only so that tests/faults, which another branch owns, still import; they should import
`oih_cli.broker`, and then this file goes. No service imports it.
"""

from oih_cli.broker import BrokerError, PrivateBroker, broker_answers, ensure_broker

__all__ = ["BrokerError", "PrivateBroker", "broker_answers", "ensure_broker"]
