"""Retries through delay queues, dead letters, replay from the failed step."""

from __future__ import annotations

from oih_dataplane import dead_letters
from oih_dataplane.spec import EdgeSpec
from tests.oih_worker.support import FlowHarness, totals, wait_for

TRIGGER = "oih_builtins.trigger:component"
SINK = "oih_builtins.sink:component"
TEST = "tests.oih_worker.components:component"


def test_retry_then_dead_letter_then_replay(harness: FlowHarness) -> None:
    harness.step("start", TRIGGER, "manual", edges=[EdgeSpec("flaky")])
    harness.step("flaky", TEST, "maybe_fail", edges=[EdgeSpec("out")])
    harness.step("out", SINK, "sink")
    harness.declare()
    harness.start()
    ids = [harness.publish("start", {"n": n, "fail": n == 7, "fatal": n == 9})
           for n in range(20)]

    wait_for(lambda: len(harness.sink("out")) == 18, 30, "the healthy messages")
    wait_for(lambda: dead_letters.count_dead_letters(
        harness.connection, harness.flow_id, "flaky") == 2, 30, "two dead letters")
    assert sorted(line["data"]["n"] for line in harness.sink("out")) == [
        n for n in range(20) if n not in (7, 9)]

    letters = dead_letters.list_dead_letters(harness.connection, harness.flow_id, "flaky")
    by_n = {letter.data["n"]: letter for letter in letters}
    retried, fatal = by_n[7], by_n[9]
    # Retried twice (3 attempts), each failure with the attempt it happened at.
    assert retried.envelope.error_type == "Boom"
    assert retried.envelope.message == "failing on attempt 3"
    assert retried.envelope.attempt == 3 and retried.envelope.headers.attempt == 3
    assert "Traceback" in retried.envelope.stack and "maybe_fail" in retried.envelope.stack
    assert retried.envelope.headers.flow_id == harness.flow_id
    assert retried.envelope.headers.step_id == "flaky"
    assert retried.envelope.headers.trace == ["start"]
    assert retried.envelope.headers.parent_message_id == ids[7]
    # A non-retryable error is dead-lettered at once.
    assert fatal.envelope.error_type == "NonRetryableError" and fatal.envelope.attempt == 1

    # Listing left them in place; get finds one by id.
    assert dead_letters.count_dead_letters(harness.connection, harness.flow_id, "flaky") == 2
    got = dead_letters.get_dead_letter(harness.connection, harness.flow_id, "flaky",
                                       retried.message_id)
    assert got is not None and got.data["n"] == 7

    # Replay from the failed step with edited data: only flaky and out run again.
    assert dead_letters.replay_dead_letter(harness.connection, harness.flow_id, "flaky",
                                           retried.message_id, data={"n": 7, "fail": False})
    wait_for(lambda: len(harness.sink("out")) == 19, 30, "the replayed message")
    replayed = [line for line in harness.sink("out") if line["data"]["n"] == 7]
    assert replayed[0]["data"]["attempt"] == 1  # attempt reset
    assert dead_letters.discard_dead_letter(harness.connection, harness.flow_id, "flaky",
                                            fatal.message_id)
    assert not dead_letters.discard_dead_letter(harness.connection, harness.flow_id, "flaky",
                                                fatal.message_id)
    assert dead_letters.count_dead_letters(harness.connection, harness.flow_id, "flaky") == 0

    assert harness.stop_all() == {"start": 0, "flaky": 0, "out": 0}
    reports = harness.reports()
    # 20 inputs + 2 retries of n=7 + 1 replay; errors: 3 attempts of n=7 + 1 fatal.
    assert totals(reports, "flaky") == {"in": 23, "out": 19, "errors": 4, "dead": 2}
    # The start step did not run again for the replay.
    assert totals(reports, "start") == {"in": 20, "out": 20, "errors": 0, "dead": 0}
    last_errors = [r.last_error for r in reports if r.step_id == "flaky" and r.errors]
    assert last_errors and not last_errors[-1].HasField("input")


def test_retry_waits_in_the_delay_queue(harness: FlowHarness) -> None:
    from oih_dataplane.spec import RetrySpec

    harness.step("flaky", TEST, "maybe_fail", edges=[EdgeSpec("out")],
                 retry=RetrySpec(max_attempts=2, initial_delay=1.5, jitter=0))
    harness.step("out", SINK, "sink")
    harness.declare()
    harness.start()
    harness.publish("flaky", {"fail": True})
    retry_queue = f"oih.flow.{harness.flow_id}.flaky.retry.1"
    wait_for(lambda: harness.queue_depth(retry_queue) == 1, 10, "the message in the delay queue")
    wait_for(lambda: dead_letters.count_dead_letters(
        harness.connection, harness.flow_id, "flaky") == 1, 10, "the dead letter")
    assert harness.queue_depth(retry_queue) == 0


def test_unroutable_output_stops_the_worker_without_losing_the_input(
        harness: FlowHarness) -> None:
    # "ghost" has no queue: the output would be dropped, so the worker refuses to ack.
    harness.step("start", TRIGGER, "manual", edges=[EdgeSpec("ghost")])
    harness.declare()
    harness.start()
    harness.publish("start", {"n": 1})
    assert harness.processes["start"].wait(timeout=30) == 3
    assert '"unroutable publish' in harness.log_of("start")
    wait_for(lambda: harness.queue_depth(f"oih.flow.{harness.flow_id}.start") == 1, 10,
             "the input back in its queue")


def test_a_message_with_unreadable_headers_is_dead_lettered_not_a_crash(
        harness: FlowHarness) -> None:
    """A delivery whose `oih-*` headers cannot be read (anyone who may publish to the flow's
    exchange can send one) must not kill the worker: killed, it would get the same message
    again on restart and crash again, until the flow is failed."""
    import pika

    from oih_dataplane import topology

    harness.step("start", TRIGGER, "manual", edges=[EdgeSpec("out")])
    harness.step("out", SINK, "sink")
    harness.declare()
    harness.start()
    for headers in ({"oih-attempt": "x"}, {"oih-trace": 5}):
        harness.channel.basic_publish(
            topology.exchange_name(harness.flow_id), topology.input_key("start"),
            b'{"data": {"n": -1}}', pika.BasicProperties(message_id=f"bad-{len(headers)}",
                                                         headers=headers), mandatory=True)
    harness.publish("start", {"n": 1})
    wait_for(lambda: len(harness.sink("out")) == 1, 30, "the good message")
    wait_for(lambda: dead_letters.count_dead_letters(
        harness.connection, harness.flow_id, "start") == 2, 30, "two dead letters")
    assert harness.processes["start"].poll() is None, harness.log_of("start")
    letters = dead_letters.list_dead_letters(harness.connection, harness.flow_id, "start")
    assert {letter.envelope.error_type for letter in letters} == {"MalformedMessage"}
    assert harness.stop_all() == {"start": 0, "out": 0}
