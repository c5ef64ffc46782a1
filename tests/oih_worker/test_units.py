"""Pure parts: SDK, spec, topology names and permissions, the step processor, reports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pika
import pytest
from google.protobuf import json_format

from oih.component.v1 import message_pb2
from oih.flows.v1 import flows_pb2
from oih_builtins import BUILTIN_COMPONENTS
from oih_dataplane import envelope, topology
from oih_dataplane import spec as defaults
from oih_dataplane.spec import EdgeSpec, RetrySpec, StepSpec, spec_from_flow
from oih_sdk import Component, Message, NonRetryableError, Snapshot, load_function, non_retryable
from oih_sdk.errors import is_retryable
from oih_worker.process import StepProcessor
from oih_worker.reports import Reporter


def test_component_decorators_and_loading() -> None:
    fn = load_function("oih_builtins.transform:component", "transform")
    out = fn(Message(data={"a": 2}), {"expression": '{"b": a + 1}'}, {})
    assert out == {"b": 3}
    assert load_function("oih_builtins.http_request", "request").__name__ == "request"
    component = Component("x")

    @component.trigger("tick")
    def tick(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> None:
        """Ticks."""

    assert component.functions["tick"].kind == "trigger"
    assert component.functions["tick"].description == "Ticks."
    with pytest.raises(LookupError):
        component.get("nope")


def test_retryability() -> None:
    @non_retryable
    class Invalid(Exception):
        pass

    class MoreInvalid(Invalid):
        pass

    assert not is_retryable(NonRetryableError())
    assert not is_retryable(MoreInvalid())
    assert is_retryable(KeyError("x"))
    assert not is_retryable(KeyError("x"), ["LookupError"])  # a base class by name
    assert is_retryable(KeyError("x"), ["ValueError"])


def test_retry_delays() -> None:
    retry = RetrySpec(max_attempts=20, initial_delay=1, multiplier=2, max_delay=60, jitter=0)
    assert [retry.delay(n) for n in (1, 2, 3, 7, 8)] == [1, 2, 4, 60, 60]
    assert retry.retry_levels == 8 and retry.level(3) == 3 and retry.level(15) == 8
    jittered = RetrySpec(initial_delay=1, jitter=0.2)
    assert all(0.8 <= jittered.delay(1) <= 1.2 for _ in range(100))
    assert RetrySpec(max_attempts=1).retry_levels == 0


def test_spec_from_flow_and_json_round_trip() -> None:
    flow = flows_pb2.Flow(name="flows/f1", tenant="tenants/t")
    node = flow.graph.nodes.add(id="b", component="components/transform", function="transform")
    node.fields.update({"expression": "$"})
    node.settings.concurrency = 7
    node.settings.retry_policy.max_attempts = 4
    node.settings.retry_policy.initial_delay.FromMilliseconds(50)
    node.settings.retry_policy.non_retryable_errors.append("ValueError")
    flow.graph.nodes.add(id="a", component="components/trigger", function="manual")
    flow.graph.nodes.add(id="c", component="components/sink", function="sink")
    flow.graph.edges.add(source="a", target="b")
    flow.graph.edges.add(source="b", target="c", condition="data.ok", mapper="data")
    spec = spec_from_flow(flow, "b", "amqp://x", "oih_builtins.transform:component")
    assert (spec.flow_id, spec.step_id, spec.tenant, spec.prefetch) == ("f1", "b", "tenants/t", 7)
    assert spec.config == {"expression": "$"}
    assert spec.retry == RetrySpec(max_attempts=4, initial_delay=0.05, multiplier=2,
                                   max_delay=60, jitter=0, non_retryable_errors=["ValueError"])
    assert spec.edges == [EdgeSpec("c", "data.ok", "data")]
    assert StepSpec.from_json(spec.to_json()) == spec
    defaults = spec_from_flow(flow, "a", "amqp://x", "oih_builtins.trigger:component")
    assert defaults.retry == RetrySpec() and defaults.prefetch == 50
    assert StepSpec.from_env({"OIH_WORKER_SPEC": spec.to_json()}) == spec


def test_topology_names_and_permissions() -> None:
    assert topology.exchange_name("f") == "oih.flow.f"
    assert topology.step_queue("f", "s") == "oih.flow.f.s"
    assert topology.input_key("s") == "step.s.input"
    assert topology.dead_queue("f", "s") == "oih.flow.f.s.dead"
    assert topology.reports_queue("f") == "oih.flow.f.reports"
    permissions = topology.step_permissions("f-1", "s_1")
    assert permissions["configure"] == "^$"
    assert re.match(permissions["write"], "oih.flow.f-1")
    assert not re.match(permissions["write"], "oih.flow.f-1x")
    assert re.match(permissions["read"], "oih.flow.f-1.s_1")
    assert not re.match(permissions["read"], "oih.flow.f-1.s_1.dead")
    assert not re.match(permissions["read"], "oih.flow.f-1.reports")
    with pytest.raises(ValueError, match="reserved"):
        topology.step_permissions("f", "reports")
    with pytest.raises(ValueError):
        topology.check_ids("f", "a.b")


def _deliver(processor: StepProcessor, data: dict[str, Any], message_id: str = "m1",
             attempt: int = 1) -> Any:
    message = Message(data=data, id=message_id, flow_id="f", step_id="s", execution_id="e",
                      attempt=attempt, trace=["prev"])
    return processor.handle(envelope.encode(message), envelope.properties_of(message))


def test_processor_outputs_are_deterministic_and_routed() -> None:
    def fn(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> Any:
        yield {"x": message.data["x"], "i": 0}
        yield Message(data={"x": -1, "i": 1}, metadata={"m": 1})
        yield Snapshot({"last": message.id})

    spec = StepSpec("f", "s", "unused", "fn", passthrough=True, edges=[
        EdgeSpec("pos", condition="data.x > 0"), EdgeSpec("all", mapper='{"y": data.i}')])
    processor = StepProcessor(spec, fn)
    first, again = _deliver(processor, {"x": 5}), _deliver(processor, {"x": 5})
    keys = [out.routing_key for out in first.outgoing]
    assert keys == ["step.pos.input", "step.all.input", "step.all.input", "snapshot"]
    # Two outputs, one dropped by a condition: 3 deliveries to successors (not the snapshot).
    assert (len(first.outputs), first.routed) == (2, 3)
    assert [o.properties.message_id for o in first.outgoing] == [
        o.properties.message_id for o in again.outgoing]
    bodies = [json.loads(out.body) for out in first.outgoing[:3]]
    assert bodies[1]["data"] == {"y": 0} and bodies[2]["data"] == {"y": 1}
    assert bodies[2]["metadata"] == {"m": 1}
    assert bodies[0]["passthrough"] == {"s": {"data": {"x": 5, "i": 0}, "metadata": {}}}
    headers = first.outgoing[0].properties.headers
    assert headers[envelope.H_STEP] == "pos" and headers[envelope.H_PARENT] == "m1"
    assert headers[envelope.H_TRACE] == ["prev", "s"] and headers[envelope.H_ATTEMPT] == 1
    assert processor.snapshot == {"last": "m1"}


def test_processor_failures() -> None:
    def fn(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> Any:
        raise ValueError("bad")

    spec = StepSpec("f", "s", "unused", "fn", retry=RetrySpec(max_attempts=2, initial_delay=1,
                                                             jitter=0))
    processor = StepProcessor(spec, fn)
    retry = _deliver(processor, {})
    assert retry.retried and retry.outgoing[0].routing_key == "step.s.retry.1"
    assert retry.outgoing[0].properties.expiration == "1000"
    assert retry.outgoing[0].properties.headers[envelope.H_ATTEMPT] == 2
    dead = _deliver(processor, {"k": 1}, attempt=2)
    assert dead.outgoing[0].routing_key == "step.s.dead"
    letter = json_format.Parse(dead.outgoing[0].body, message_pb2.ErrorEnvelope())
    assert (letter.error_type, letter.message, letter.attempt) == ("ValueError", "bad", 2)
    assert letter.input.id == "m1" and dict(letter.input.data) == {"k": 1}
    # A malformed body goes straight to the dead letters, and a bad edge is not retried.
    malformed = processor.handle(b"not json", pika.BasicProperties(message_id="z"))
    assert malformed.outgoing[0].routing_key == "step.s.dead"
    edge_spec = StepSpec("f", "s", "unused", "fn", edges=[EdgeSpec("t", mapper="$error('no')")])
    bad_edge = _deliver(StepProcessor(edge_spec, lambda m, c, s: {"a": 1}), {})
    assert bad_edge.outgoing[0].routing_key == "step.s.dead"


def test_a_reply_goes_to_the_waiting_request_only() -> None:
    from oih_builtins.reply import reply

    spec = StepSpec("f", "s", "unused", "reply", edges=[EdgeSpec("next")])
    processor = StepProcessor(spec, reply)
    spec.config.update({"status": 201, "headers": {"x-a": "1"}, "body": "{'id': id}"})
    message = Message(data={"id": 12345678901234567890123}, id="m1", flow_id="f", step_id="s",
                      execution_id="e")
    waiting = processor.handle(envelope.encode(message), envelope.properties_of(
        message, reply_to="reply.instance", correlation_id="e"))
    replies = [out for out in waiting.outgoing if out.routing_key == "reply.instance"]
    assert len(replies) == 1 and not replies[0].mandatory  # nobody waiting must not stop us
    assert json.loads(replies[0].body) == {"id": 12345678901234567890123}
    assert replies[0].properties.correlation_id == "e"
    assert replies[0].properties.headers["oih-reply-status"] == 201
    assert replies[0].properties.headers["oih-reply-headers"] == {"x-a": "1"}
    # The message goes on, and the next step still knows where a reply would go.
    onward = [out for out in waiting.outgoing if out.routing_key == "step.next.input"]
    assert onward[0].properties.reply_to == "reply.instance"
    # Without a waiting request (ASYNC, :execute) no reply is sent.
    alone = processor.handle(envelope.encode(message), envelope.properties_of(message))
    assert [out.routing_key for out in alone.outgoing] == ["step.next.input"]


def test_a_dead_letter_keeps_the_input_json_exact() -> None:
    def fn(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> Any:
        raise ValueError("bad")

    processor = StepProcessor(StepSpec("f", "s", "unused", "fn",
                                       retry=RetrySpec(max_attempts=1)), fn)
    dead = _deliver(processor, {"id": 2**70 + 1, "n": 21})
    data = json.loads(dead.outgoing[0].body)["input"]["data"]
    assert data == {"id": 2**70 + 1, "n": 21} and isinstance(data["n"], int)


def test_reports_cap_samples_and_truncate() -> None:
    reporter = Reporter("f", "s", "w")
    for n in range(5):
        reporter.received("e", {"n": n})
    reporter.emitted("e", [{"big": "x" * 20000}], routed=2)
    first = json.loads(reporter.take_batch() or b"")
    reporter.received("e", {"n": 9})
    second = json.loads(reporter.take_batch() or b"")
    assert reporter.take_batch() is None
    report = first["reports"][0]
    assert report["messagesIn"] == "5" and len(report["inputSamples"]) == 3
    assert (report["messagesOut"], report["messagesRouted"]) == ("1", "2")
    assert report["outputSamples"] == [{"truncated": True, "size": 20010}]
    assert "inputSamples" not in second["reports"][0]  # the cap holds across batches


def test_builtin_descriptions() -> None:
    names = {component["name"] for component in BUILTIN_COMPONENTS}
    assert names == {"trigger", "timer", "transform", "filter", "split", "http-request",
                     "http-poll", "sink", "log", "reply"}
    for component in BUILTIN_COMPONENTS:
        _module, _, attribute = component["entry_point"].partition(":")
        assert attribute == "component"
        for function in component["triggers"] + component["actions"]:
            assert load_function(component["entry_point"], function["name"])


def test_builtin_functions() -> None:
    def call(entry: str, name: str, data: dict[str, Any], config: dict[str, Any]) -> Any:
        return load_function(f"oih_builtins.{entry}:component", name)(
            Message(data=data, id="m"), config, {})

    assert call("filter", "filter", {"a": 1}, {"condition": "a = 1"}).data == {"a": 1}
    assert call("filter", "filter", {"a": 2}, {"condition": "a = 1"}) is None
    assert list(call("split", "split", {"xs": [{"a": 1}, 2]}, {"path": "xs"})) == [
        {"a": 1}, {"value": 2}]
    assert list(call("split", "split", {}, {"path": "xs"})) == []
    assert call("timer", "timer", {"fired_at": "T"}, {}) == {"fired_at": "T"}
    assert call("trigger", "manual", {"a": 1}, {}).data == {"a": 1}


def test_http_request_statuses(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["content-length"])
            body = json.loads(self.rfile.read(length))
            status = int(body.get("status", 200))
            answer = json.dumps({"echo": body}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # The test server is on loopback, which flows may only reach when the admin allows it.
    monkeypatch.setenv("OIH_EGRESS_ALLOWED_NETWORKS", "127.0.0.1/32")
    try:
        fn = load_function("oih_builtins.http_request:component", "request")
        config = {"url": f"http://127.0.0.1:{server.server_port}/x"}
        ok = fn(Message(data={"a": 1}), config, {})
        assert ok["status"] == 200 and ok["body"] == {"echo": {"a": 1}}
        with pytest.raises(Exception, match="HTTP 404") as client_error:
            fn(Message(data={"status": 404}), config, {})
        assert not is_retryable(client_error.value)
        with pytest.raises(Exception, match="HTTP 503") as server_error:
            fn(Message(data={"status": 503}), config, {})
        assert is_retryable(server_error.value)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_contract_documents_the_defaults_the_worker_uses() -> None:
    # flows.proto is what integrators read; the worker is what runs. They must agree.
    text = (Path(__file__).parents[2] / "proto/oih/flows/v1/flows.proto").read_text()
    retry_policy = text[text.index("message RetryPolicy {"):]
    retry_policy = retry_policy[:retry_policy.index("\n}")]
    documented = re.findall(r"the default \(([\d.]+) ?(s?)\)", retry_policy)
    assert [(float(n), unit) for n, unit in documented] == [
        (defaults.DEFAULT_MAX_ATTEMPTS, ""), (defaults.DEFAULT_INITIAL_DELAY, "s"),
        (defaults.DEFAULT_MULTIPLIER, ""), (defaults.DEFAULT_MAX_DELAY, "s"), (defaults.DEFAULT_JITTER, "")]
    concurrency = re.search(r"0 means the default \((\d+)\)\. The worker", text)
    assert concurrency is not None and int(concurrency.group(1)) == defaults.DEFAULT_PREFETCH
    # And a step without settings really gets them.
    flow = flows_pb2.Flow(name="flows/f", graph=flows_pb2.Graph(
        nodes=[flows_pb2.Node(id="a", component="components/c", function="x")]))
    unset = spec_from_flow(flow, "a", "amqp://x", "m:c")
    assert unset.prefetch == defaults.DEFAULT_PREFETCH
    assert unset.retry == RetrySpec(defaults.DEFAULT_MAX_ATTEMPTS, defaults.DEFAULT_INITIAL_DELAY,
                                    defaults.DEFAULT_MULTIPLIER, defaults.DEFAULT_MAX_DELAY,
                                    defaults.DEFAULT_JITTER)
