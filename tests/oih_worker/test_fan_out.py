"""A fanning-out step publishes its outputs as they are produced: every output arrives exactly
once with its deterministic id, the input is acked only after all of them were confirmed, and
no more than `MAX_IN_FLIGHT` (plus one part) of them wait for confirms at any time — the worker
never holds the whole fan-out in memory (bench/scale.py measures the peak RSS)."""

from __future__ import annotations

import threading

from oih_dataplane import envelope, topology
from oih_dataplane.spec import EdgeSpec
from oih_worker.process import PART_SIZE
from oih_worker.runtime import MAX_IN_FLIGHT, Worker
from tests.oih_worker.support import FlowHarness, wait_for

FAN_OUT = 6000  # several times the window, so the bound means something


def test_fan_out_is_streamed_with_a_bounded_window_and_delivered_exactly(
        harness: FlowHarness) -> None:
    harness.step("fan", "tests.oih_worker.components:component", "fan_out",
                 edges=[EdgeSpec("out")])
    harness.step("out", "oih_builtins.sink:component", "sink")  # declared, not run
    harness.declare()
    parent = harness.publish("fan", {"n": FAN_OUT})
    fan_queue = topology.step_queue(harness.flow_id, "fan")
    out_queue = topology.step_queue(harness.flow_id, "out")
    worker = Worker(harness.specs["fan"])

    def stop_when_done() -> None:
        wait_for(lambda: harness.queue_depth(out_queue) == FAN_OUT, 120, "every output")
        worker.stop()

    watcher = threading.Thread(target=stop_when_done, daemon=True)
    watcher.start()
    assert worker.run() == 0  # in this thread: the worker installs signal handlers
    watcher.join(5)

    assert MAX_IN_FLIGHT < FAN_OUT
    assert 0 < worker.peak_in_flight <= MAX_IN_FLIGHT + PART_SIZE
    ids = [properties.message_id for properties, _body in harness.drain(out_queue)]
    assert len(ids) == FAN_OUT
    assert set(ids) == {envelope.output_id(parent, "out", i) for i in range(FAN_OUT)}
    assert harness.queue_depth(fan_queue) == 0  # the input was acked, not requeued
