"""Real broker, real worker processes: routing, fan-out, reports, graceful stop."""

from __future__ import annotations

import json

from oih_dataplane.spec import EdgeSpec
from tests.oih_worker.support import FlowHarness, totals, wait_for

TRIGGER = "oih_builtins.trigger:component"
TRANSFORM = "oih_builtins.transform:component"
SINK = "oih_builtins.sink:component"


def test_thousand_messages_through_three_steps(harness: FlowHarness) -> None:
    harness.step("start", TRIGGER, "manual", edges=[EdgeSpec("shape")])
    harness.step("shape", TRANSFORM, "transform",
                 config={"expression": '{"n": n, "double": n * 2, "label": "#" & $string(n)}'},
                 edges=[EdgeSpec("out")])
    harness.step("out", SINK, "sink")
    harness.declare()
    harness.start()
    for n in range(1000):
        harness.publish("start", {"n": n}, execution_id=f"exec-{n % 2}")

    wait_for(lambda: len(harness.sink("out")) >= 1000, 60, "1000 messages at the sink")
    codes = harness.stop_all()
    assert codes == {"start": 0, "shape": 0, "out": 0}, {s: harness.log_of(s) for s in codes}

    lines = harness.sink("out")
    assert len(lines) == 1000
    assert len({line["id"] for line in lines}) == 1000
    assert sorted(line["data"]["n"] for line in lines) == list(range(1000))
    assert all(line["data"]["double"] == line["data"]["n"] * 2 for line in lines)
    assert all(line["data"]["label"] == f"#{line['data']['n']}" for line in lines)
    assert {line["execution_id"] for line in lines} == {"exec-0", "exec-1"}

    # The workers sent their last reports before exiting; the counts add up per step.
    reports = harness.reports()
    assert totals(reports, "start") == {"in": 1000, "out": 1000, "errors": 0, "dead": 0}
    assert totals(reports, "shape") == {"in": 1000, "out": 1000, "errors": 0, "dead": 0}
    assert totals(reports, "out") == {"in": 1000, "out": 0, "errors": 0, "dead": 0}
    # Samples: at most 3 inputs per step and execution over all batches.
    for step in ("start", "shape", "out"):
        for execution in ("exec-0", "exec-1"):
            samples = [s for r in reports if r.step_id == step and r.execution_id == execution
                       for s in r.input_samples]
            assert len(samples) == 3
    # Logs are JSON and never contain message data.
    for step in ("start", "shape", "out"):
        assert '"label"' not in harness.log_of(step)


def test_conditions_mapper_and_fan_out(harness: FlowHarness) -> None:
    harness.step("start", TRIGGER, "manual", edges=[
        EdgeSpec("only_a", condition='data.kind = "a"'),
        EdgeSpec("only_b", condition='data.kind = "b"',
                 mapper='{"value": data.n, "kind": $uppercase(data.kind)}'),
        EdgeSpec("all"),
    ])
    for step in ("only_a", "only_b", "all"):
        harness.step(step, SINK, "sink")
    harness.declare()
    harness.start()
    for n in range(30):
        harness.publish("start", {"n": n, "kind": "ab"[n % 2]})

    wait_for(lambda: len(harness.sink("all")) == 30 and len(harness.sink("only_a")) == 15
             and len(harness.sink("only_b")) == 15, 30, "the three branches")
    assert harness.stop_all() == {"start": 0, "only_a": 0, "only_b": 0, "all": 0}
    only_a, only_b, every = harness.sink("only_a"), harness.sink("only_b"), harness.sink("all")
    assert {line["data"]["kind"] for line in only_a} == {"a"}
    assert sorted(line["data"]["n"] for line in only_a) == list(range(0, 30, 2))
    # The mapper reshaped what only_b received, and only what only_b received.
    assert all(line["data"] == {"value": line["data"]["value"], "kind": "B"} for line in only_b)
    assert sorted(line["data"]["value"] for line in only_b) == list(range(1, 30, 2))
    assert sorted(line["data"]["n"] for line in every) == list(range(30))
    # Each successor got its own message: ids differ across branches.
    ids = [line["id"] for line in only_a + only_b + every]
    assert len(set(ids)) == 60


def test_snapshot_is_kept_between_calls_and_published(harness: FlowHarness) -> None:
    harness.step("start", "tests.oih_worker.components:component", "count",
                 edges=[EdgeSpec("out")], snapshot={"seen": 10})
    harness.step("out", SINK, "sink")
    harness.declare()
    harness.start()
    for n in range(5):
        harness.publish("start", {"n": n})
    wait_for(lambda: len(harness.sink("out")) == 5, 30, "5 messages")
    assert harness.stop_all() == {"start": 0, "out": 0}
    assert sorted(line["data"]["seen"] for line in harness.sink("out")) == [11, 12, 13, 14, 15]
    snapshots = [json.loads(body) for _, body in harness.drain(harness.snapshots_queue)]
    assert len(snapshots) == 5
    assert snapshots[-1]["name"] == f"flows/{harness.flow_id}/steps/start/snapshot"
    assert snapshots[-1]["data"] == {"seen": 15}
    # Emission order is carried by strictly increasing sequence numbers (int64 as a string).
    sequences = [int(s["sequence"]) for s in snapshots]
    assert sequences == sorted(set(sequences))
