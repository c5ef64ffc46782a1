"""The executions view: per-execution counters from workers' reports, retention, dead letters.

- `ingest` / `record_start` / `record_replay` (ingest.py) write the view; `state.py` holds the
  rule that decides RUNNING / SUCCEEDED / FAILED.
- `ReportsConsumer` (consumer.py) feeds `ingest` from each followed flow's reports queue.
- `list_executions` / `get_execution` (views.py) and the dead-letter functions
  (dead_letters.py) are the plain logic behind the orchestrator's RPCs.
- `purge` / `settle` / `sweep` (retention.py) keep the view bounded and closed.
"""

from .consumer import ReportsConsumer
from .dead_letters import (
    discard_dead_letter,
    get_dead_letter,
    list_dead_letters,
    replay_dead_letter,
)
from .ingest import ingest, record_replay, record_start
from .models import ExecutionRow, ReportBatchRow, StepExecutionRow
from .retention import RetentionSettings, purge, settle, sweep
from .state import Edge, FlowShape
from .views import get_execution, list_executions

__all__ = [
    "Edge", "ExecutionRow", "FlowShape", "ReportBatchRow", "ReportsConsumer",
    "RetentionSettings", "StepExecutionRow", "discard_dead_letter", "get_dead_letter",
    "get_execution", "ingest", "list_dead_letters", "list_executions", "purge",
    "record_replay", "record_start", "replay_dead_letter", "settle", "sweep",
]
