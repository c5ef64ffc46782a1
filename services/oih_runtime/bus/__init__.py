"""The platform event bus on RabbitMQ (README: "How it fits together", "Guarantees").

- `Outbox(source).add(session, type, payload, ...)`: store an event in the caller's transaction.
- `Relay(engine).start()`: a background thread publishing the outbox with pipelined confirms.
- `Consumer(engine, service).on(type, handler)`: idempotent handlers, retries, dead letters.
- `list_dead_letters(service)`, `replay_dead_letters(service, ids)`; CLI: `oih events` (`oih_cli/events.py`).
"""

from .consumer import Consumer, PermanentError, RetryPolicy, topic_matches
from .dead_letters import DeadLetter, NoDeadLetterQueue, list_dead_letters, replay_dead_letters
from .models import OutboxEvent, ProcessedEvent
from .outbox import Outbox, add, build_event
from .relay import Relay
from .topology import DEFAULT_EXCHANGE, ServiceQueues, rabbitmq_url

__all__ = [
    "DEFAULT_EXCHANGE",
    "Consumer",
    "DeadLetter",
    "NoDeadLetterQueue",
    "Outbox",
    "OutboxEvent",
    "PermanentError",
    "ProcessedEvent",
    "Relay",
    "RetryPolicy",
    "ServiceQueues",
    "add",
    "build_event",
    "list_dead_letters",
    "rabbitmq_url",
    "replay_dead_letters",
    "topic_matches",
]
