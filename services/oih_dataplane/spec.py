"""StepSpec: everything one worker needs, as JSON (the orchestrator passes it in the
environment variable `OIH_WORKER_SPEC`, or a file named by `OIH_WORKER_SPEC_FILE`)."""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from google.protobuf import json_format

from oih.flows.v1 import flows_pb2

# Defaults for unset fields of a step's settings, as documented in flows.proto (RetryPolicy,
# NodeSettings.concurrency); tests/oih_worker/test_units.py checks that both say the same.
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_INITIAL_DELAY = 1.0
DEFAULT_MULTIPLIER = 2.0
DEFAULT_MAX_DELAY = 60.0
DEFAULT_JITTER = 0.2
# Prefetch: how many inputs may be unacked at once. Large enough to pipeline publishes and
# confirms (prefetch 1 would cost a confirm round-trip per message), small enough to bound the
# duplicates a crash can cause.
DEFAULT_PREFETCH = 50
DEFAULT_REPORT_INTERVAL = 0.2
# Retry delay queues per step at most; later attempts share the last level (see topology).
MAX_RETRY_LEVELS = 8


@dataclass
class RetrySpec:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_delay: float = DEFAULT_INITIAL_DELAY
    multiplier: float = DEFAULT_MULTIPLIER
    max_delay: float = DEFAULT_MAX_DELAY
    jitter: float = DEFAULT_JITTER
    non_retryable_errors: list[str] = field(default_factory=list)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds before retry `retry` (1 = the retry after the first failed attempt)."""
        base = min(self.initial_delay * self.multiplier ** (retry - 1), self.max_delay)
        if self.jitter:
            base *= (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return max(base, 0.0)

    @property
    def retry_levels(self) -> int:
        """How many retry delay queues the step needs."""
        return max(0, min(self.max_attempts - 1, MAX_RETRY_LEVELS))

    def level(self, retry: int) -> int:
        """The delay queue (1-based) of retry number `retry`."""
        return min(retry, self.retry_levels)


@dataclass
class EdgeSpec:
    target: str
    condition: str = ""
    mapper: str = ""
    id: str = ""


@dataclass
class StepSpec:
    flow_id: str
    step_id: str
    entry_point: str  # PythonEntryPoint.object_reference, e.g. "oih_builtins.transform:component"
    function: str
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    tenant: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    retry: RetrySpec = field(default_factory=RetrySpec)
    prefetch: int = DEFAULT_PREFETCH
    passthrough: bool = False
    edges: list[EdgeSpec] = field(default_factory=list)
    report_interval: float = DEFAULT_REPORT_INTERVAL
    # Flush reports early when this many messages were counted since the last flush.
    report_max_messages: int = 1000
    # The step's last persistent snapshot when the worker starts and its sequence number: the
    # orchestrator reads them from the Snapshots service at every deployment (see
    # oih_orchestrator.snapshots), so a restarted flow continues where it stopped.
    snapshot: dict[str, Any] = field(default_factory=dict)
    snapshot_sequence: int = 0
    # Normally the orchestrator declares the topology and the worker's broker user may not
    # (configure permission: none). True lets a worker declare its own flow (development).
    declare_topology: bool = False
    # A name for reports and logs; default: host and process id.
    worker_name: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> StepSpec:
        raw = dict(raw)
        raw["retry"] = RetrySpec(**raw.get("retry", {}))
        raw["edges"] = [EdgeSpec(**edge) for edge in raw.get("edges", [])]
        return cls(**raw)

    @classmethod
    def from_json(cls, text: str) -> StepSpec:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> StepSpec:
        env = dict(os.environ if env is None else env)
        if env.get("OIH_WORKER_SPEC"):
            return cls.from_json(env["OIH_WORKER_SPEC"])
        if env.get("OIH_WORKER_SPEC_FILE"):
            with open(env["OIH_WORKER_SPEC_FILE"], encoding="utf-8") as handle:
                return cls.from_json(handle.read())
        raise RuntimeError("set OIH_WORKER_SPEC (JSON) or OIH_WORKER_SPEC_FILE (a path)")


def flow_id_of(flow: flows_pb2.Flow) -> str:
    """`flows/{flow}` → `{flow}`."""
    return flow.name.rsplit("/", 1)[-1]


def retry_from_proto(policy: flows_pb2.RetryPolicy, present: bool = True) -> RetrySpec:
    """Unset (zero) fields take the defaults. Jitter 0 cannot be told from unset in proto3: an
    explicit policy's 0 means no jitter, a missing policy gets the default jitter."""
    def seconds(duration: Any, default: float) -> float:
        value = duration.seconds + duration.nanos / 1e9
        return value if value > 0 else default

    return RetrySpec(
        max_attempts=policy.max_attempts or DEFAULT_MAX_ATTEMPTS,
        initial_delay=seconds(policy.initial_delay, DEFAULT_INITIAL_DELAY),
        multiplier=policy.multiplier if policy.multiplier >= 1 else DEFAULT_MULTIPLIER,
        max_delay=seconds(policy.max_delay, DEFAULT_MAX_DELAY),
        jitter=min(max(policy.jitter, 0.0), 1.0) if present else DEFAULT_JITTER,
        non_retryable_errors=list(policy.non_retryable_errors),
    )


def spec_from_flow(flow: flows_pb2.Flow, step_id: str, amqp_url: str, entry_point: str,
                   **overrides: Any) -> StepSpec:
    """The StepSpec of one node of a flow; `entry_point` is its component's object reference."""
    nodes = {node.id: node for node in flow.graph.nodes}
    if step_id not in nodes:
        raise KeyError(f"flow {flow.name!r} has no step {step_id!r}")
    node = nodes[step_id]
    settings = node.settings
    spec = StepSpec(
        flow_id=flow_id_of(flow),
        step_id=step_id,
        tenant=flow.tenant,
        entry_point=entry_point,
        function=node.function,
        amqp_url=amqp_url,
        config=json_format.MessageToDict(node.fields) if node.HasField("fields") else {},
        retry=retry_from_proto(settings.retry_policy, settings.HasField("retry_policy")),
        prefetch=settings.concurrency if settings.concurrency > 0 else DEFAULT_PREFETCH,
        passthrough=settings.passthrough,
        edges=[EdgeSpec(target=edge.target, condition=edge.condition, mapper=edge.mapper,
                        id=edge.id)
               for edge in flow.graph.edges if edge.source == step_id],
    )
    for key, value in overrides.items():
        setattr(spec, key, value)
    return spec
