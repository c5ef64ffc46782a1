"""When is an execution over? The state rule, from workers' counters and the flow's graph.

What a worker counts (oih_worker.runtime/process/reports), per step and execution:
- `messages_in`: every delivery it took from its input queue (a retry counts again);
- then, in the same callback and so in the same report, exactly one outcome per delivery:
  success (`messages_out` += the outputs the FUNCTION emitted, `messages_routed` += the
  deliveries published to successor steps for them: one per output and edge whose condition
  held), or a failure (`errors` += 1), which is either a scheduled retry or a dead letter
  (`dead_lettered` += 1 too).
So a reported delivery is always finished, and what it caused is in the same report. Deliveries
into step S come from:
- the trigger (the entry step, once per execution: `triggers`),
- retries of S (`errors_S - dead_lettered_S`, each comes back as one more delivery),
- replays of S's dead letters (`replayed_S`, recorded by the orchestrator when it replays),
- each edge P→S: the deliveries P routed over it.
Write `base_S = retries_S + replayed_S`.

The rule has two parts; an execution is SETTLED when both hold, else OUTSTANDING (RUNNING):
1. Everything published was received: Σ_S in_S == triggers + Σ_P routed_P + Σ_S base_S, and
   no step is below its own deliveries (in_S >= base_S).
2. Every step received what its predecessors sent it: in_S == triggers (entry steps, as one
   group: the trigger goes to one of them) + base_S + Σ over edges P→S of the deliveries of
   that edge.
Part 1 alone is not enough because reports of different workers race: in trigger → a → b, when
b's report (in 1) arrives before a's (in 1, routed 1), the sums already agree (1 == 1 + 0) while
a's report is still owed; part 2 sees the entry step below its trigger. In general a late report
shows up as a step that received more than its predecessors are known to have sent, or less.

The deliveries of one edge follow from the counters: an edge without a condition carries every
output of its source (out_P), so P's conditional edges together carry
`routed_P - out_P x (P's unconditional edges)`, all of it on the edge when P has one conditional
edge. Only a step with two or more conditional edges leaves the split unknown; its conditional
deliveries then bound each target (between 0 and min(that remainder, out_P) per edge), part 2
becomes `lower <= in_S <= upper`, and part 1 still requires the total. That case is exact once
all reports are in, but a race can, in a rare pattern (a late report whose missing deliveries
are exactly offset elsewhere within those bounds), show SUCCEEDED briefly before the late
report turns it back to RUNNING. A per-target routed count in StepReport would close that gap.

SETTLED → FAILED when a dead letter is neither replayed nor gone, else SUCCEEDED.
Without the flow's graph (UNKNOWN) nothing can be settled from counts: RUNNING, or FAILED as
soon as a dead letter is outstanding (that much is certain).

Reports are lossy (a worker crash loses its unsent counts, so the deliveries it caused look
unexplained), so `retention.settle` closes an execution with no change for a long quiet period.
Workers that predate `messages_routed` report 0 for it: their executions look OUTSTANDING until
that period ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from oih_dataplane.spec import StepSpec

from .models import ExecutionState

SETTLED, OUTSTANDING, UNKNOWN = "settled", "outstanding", "unknown"


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
    messages_routed: int = 0

    @property
    def base(self) -> int:
        """Deliveries owed to the step by itself: its retries and replays."""
        return self.errors - self.dead_lettered + self.replayed


def outstanding_dead_letters(steps: Mapping[str, Counts]) -> int:
    return sum(max(c.dead_lettered - c.replayed, 0) for c in steps.values())


def progress(steps: Mapping[str, Counts], triggers: int, shape: FlowShape | None) -> str:
    """SETTLED, OUTSTANDING or UNKNOWN (see the module docstring)."""
    if shape is None:
        return UNKNOWN
    zero = Counts()
    roots = shape.roots
    every = shape.steps | set(steps)
    # Part 1: everything published was received.
    published = triggers + sum(steps.get(s, zero).messages_routed + steps.get(s, zero).base
                               for s in every)
    if sum(steps.get(s, zero).messages_in for s in every) != published:
        return OUTSTANDING
    if any(steps.get(s, zero).messages_in < steps.get(s, zero).base for s in every):
        return OUTSTANDING
    # Part 2: per target (the entry steps as one group), [lower, upper] of what it was sent.
    def group(step: str) -> str:
        return "" if step in roots else step

    lower: dict[str, int] = {}
    upper: dict[str, int] = {}
    received: dict[str, int] = {}
    for step in every:
        counts = steps.get(step, zero)
        key = group(step)
        lower[key] = lower.get(key, 0) + counts.base
        received[key] = received.get(key, 0) + counts.messages_in
    lower[""] = lower.get("", 0) + triggers
    received.setdefault("", 0)
    upper.update(lower)
    outgoing: dict[str, list[Edge]] = {}
    for edge in shape.edges:
        outgoing.setdefault(edge.source, []).append(edge)
    for source, edges in outgoing.items():
        counts = steps.get(source, zero)
        conditional = [edge for edge in edges if edge.conditional]
        filtered = counts.messages_routed - counts.messages_out * (len(edges) - len(conditional))
        if filtered < 0 or filtered > counts.messages_out * len(conditional):
            return OUTSTANDING  # counters that no delivery pattern explains
        for edge in edges:
            key = group(edge.target)
            if not edge.conditional:
                low = high = counts.messages_out
            elif len(conditional) == 1:
                low = high = filtered
            else:
                low, high = 0, min(filtered, counts.messages_out)
            lower[key] = lower.get(key, 0) + low
            upper[key] = upper.get(key, 0) + high
            received.setdefault(key, 0)
    for key, got in received.items():
        if not lower.get(key, 0) <= got <= upper.get(key, 0):
            return OUTSTANDING
    return SETTLED


def state_of(steps: Mapping[str, Counts], triggers: int, shape: FlowShape | None
             ) -> tuple[ExecutionState, str]:
    """(execution state, progress): RUNNING, SUCCEEDED or FAILED with why."""
    kind = progress(steps, triggers, shape)
    failed = outstanding_dead_letters(steps) > 0
    if kind == SETTLED:
        return (ExecutionState.FAILED if failed else ExecutionState.SUCCEEDED), kind
    if kind == UNKNOWN and failed:
        return ExecutionState.FAILED, kind
    return ExecutionState.RUNNING, kind
