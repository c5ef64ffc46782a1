"""When is an execution over? The state rule, from workers' counters and the flow's graph.

What a worker counts (oih_worker.runtime/process/reports), per step and execution:
- `messages_in`: every delivery it took from its input queue (a retry counts again);
- then, in the same callback, exactly one outcome per delivery: success (`messages_out` +=
  the number of outputs the FUNCTION emitted, before any edge), or a failure (`errors` += 1),
  which is either a scheduled retry or a dead letter (`dead_lettered` += 1 too).
So a reported delivery is always finished: nothing is "received but not processed" in a
report. Work is outstanding only as deliveries published to a step's queue that the step has
not reported receiving yet. Deliveries into step S come from:
- the trigger (the entry step, once per execution: `triggers`),
- retries of S (`errors_S - dead_lettered_S`, each comes back as one more delivery),
- replays of S's dead letters (`replayed_S`),
- each edge P→S: one delivery per output of P that passes the edge's condition.

The rule: for every step S, with `base_S = retries_S + replayed_S`,
    lower_S = base_S + Σ out_P over unconditional edges P→S
    upper_S = lower_S + Σ out_P over conditional edges P→S
(the entry steps together must have received `triggers + Σ base`). Then
- some step has in_S < lower_S (a delivery is queued, or waits for a retry) or in_S > upper_S
  (a predecessor's report has not arrived yet: reports of different workers race)
  → OUTSTANDING → RUNNING;
- every step has in_S == upper_S (all that could arrive has arrived) → SETTLED → FAILED when a dead letter is neither
  replayed nor gone, else SUCCEEDED;
- otherwise (within bounds, but only conditions can explain the gap) → AMBIGUOUS → RUNNING,
  and `retention.settle` closes it after a short quiet period.
Without the flow's graph (UNKNOWN) nothing can be settled from counts: RUNNING, or FAILED as
soon as a dead letter is outstanding (that much is certain).

Why conditions are ambiguous: StepReport says how many outputs the function emitted, not how
many deliveries the worker published after the edges' conditions. A `messages_routed` counter
(per target step) in StepReport would make the rule exact; see the report of this module.
Reports are also lossy (a worker crash loses its unsent counts; a redelivery counts twice), so
`settle` closes an execution stuck in OUTSTANDING after a long quiet period as well.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from oih_worker.spec import StepSpec

SETTLED, AMBIGUOUS, OUTSTANDING, UNKNOWN = "settled", "ambiguous", "outstanding", "unknown"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    conditional: bool = False


@dataclass(frozen=True)
class FlowShape:
    """The graph of the flow version that runs: steps and edges (with whether they filter)."""

    steps: frozenset[str]
    edges: tuple[Edge, ...] = ()

    @property
    def roots(self) -> frozenset[str]:
        """Entry steps: no edge points to them (the trigger's message goes to one of them)."""
        return self.steps - {edge.target for edge in self.edges}

    @classmethod
    def from_specs(cls, specs: Iterable[StepSpec]) -> FlowShape:
        specs = list(specs)
        return cls(frozenset(spec.step_id for spec in specs), tuple(
            Edge(spec.step_id, edge.target, bool(edge.condition.strip()))
            for spec in specs for edge in spec.edges))


@dataclass
class Counts:
    messages_in: int = 0
    messages_out: int = 0
    errors: int = 0
    dead_lettered: int = 0
    replayed: int = 0

    @property
    def base(self) -> int:
        """Deliveries owed to the step by itself: its retries and replays."""
        return self.errors - self.dead_lettered + self.replayed


@dataclass
class _Bounds:
    lower: int = 0
    upper: int = 0
    received: int = 0
    steps: list[str] = field(default_factory=list)


def outstanding_dead_letters(steps: Mapping[str, Counts]) -> int:
    return sum(max(c.dead_lettered - c.replayed, 0) for c in steps.values())


def progress(steps: Mapping[str, Counts], triggers: int, shape: FlowShape | None) -> str:
    """SETTLED, AMBIGUOUS, OUTSTANDING or UNKNOWN (see the module docstring)."""
    if shape is None:
        return UNKNOWN
    zero = Counts()
    roots = shape.roots
    # The entry steps form one group: the trigger goes to one of them, we need not know which.
    groups: dict[str, _Bounds] = {}
    for step in shape.steps | set(steps):
        key = "" if step in roots else step
        bounds = groups.setdefault(key, _Bounds())
        counts = steps.get(step, zero)
        bounds.lower += counts.base
        bounds.upper += counts.base
        bounds.received += counts.messages_in
    entry = groups.setdefault("", _Bounds())
    entry.lower += triggers
    entry.upper += triggers
    for edge in shape.edges:
        out = steps.get(edge.source, zero).messages_out
        bounds = groups["" if edge.target in roots else edge.target]
        bounds.upper += out
        if not edge.conditional:
            bounds.lower += out
    verdict = SETTLED
    for bounds in groups.values():
        if not bounds.lower <= bounds.received <= bounds.upper:
            return OUTSTANDING
        if bounds.received < bounds.upper:  # only a condition can have dropped the rest
            verdict = AMBIGUOUS
    return verdict


def state_of(steps: Mapping[str, Counts], triggers: int, shape: FlowShape | None
             ) -> tuple[str, str]:
    """(execution state, progress): RUNNING, SUCCEEDED or FAILED with why."""
    kind = progress(steps, triggers, shape)
    failed = outstanding_dead_letters(steps) > 0
    if kind == SETTLED:
        return ("FAILED" if failed else "SUCCEEDED"), kind
    if kind == UNKNOWN and failed:
        return "FAILED", kind
    return "RUNNING", kind
