"""Helpers of the orchestrator tests: flows of built-ins, events in and out, waiting."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
from google.protobuf import json_format

from oih.events.v1 import event_pb2
from oih.events.v1 import flows_pb2 as flow_events
from oih.flows.v1 import flows_pb2
from oih_runtime.bus import build_event

TENANT = "tenants/acme"
#: The transform every test flow applies, so the sink shows that data went through it.
EXPRESSION = '{"n": n * 2, "seen": "transform"}'


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.1)


def new_flow_id() -> str:
    return f"f{uuid.uuid4().hex[:12]}"


def three_step_flow(builtins: dict[str, str], flow_id: str | None = None,
                    tenant: str = TENANT) -> flows_pb2.Flow:
    """trigger → transform → sink, with the built-in components."""
    flow = flows_pb2.Flow(
        name=f"flows/{flow_id or new_flow_id()}", display_name="test", tenant=tenant,
        state=flows_pb2.STATE_STARTING, version=1, running_version=1,
        graph=flows_pb2.Graph(
            nodes=[flows_pb2.Node(id="start", component=builtins["trigger"], function="manual"),
                   flows_pb2.Node(id="double", component=builtins["transform"],
                                  function="transform"),
                   flows_pb2.Node(id="sink", component=builtins["sink"], function="sink")],
            edges=[flows_pb2.Edge(id="e1", source="start", target="double"),
                   flows_pb2.Edge(id="e2", source="double", target="sink")]))
    flow.graph.nodes[1].fields.update({"expression": EXPRESSION})
    return flow


def sink_lines(data_dir: Path, flow_id: str, step_id: str = "sink") -> list[dict[str, Any]]:
    path = data_dir / "sinks" / flow_id / f"{step_id}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class EventBus:
    """Publishes events to a test exchange and collects the orchestrator's answers."""

    ANSWERS = ("oih.flow.started", "oih.flow.stopped", "oih.flow.failed")

    def __init__(self, amqp_url: str, exchange: str) -> None:
        self.exchange = exchange
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        self.queue = self.channel.queue_declare("", exclusive=True).method.queue
        for key in self.ANSWERS:
            self.channel.queue_bind(self.queue, exchange, routing_key=key)
        self.seen: list[event_pb2.Event] = []

    def publish(self, event_type: str, payload: Any, tenant: str = TENANT,
                source: str = "oih-flows") -> None:
        event = build_event(event_type, payload, source=source, tenant=tenant)
        self.channel.basic_publish(self.exchange, event_type, event.SerializeToString(),
                                   pika.BasicProperties(message_id=event.id, delivery_mode=2),
                                   mandatory=True)

    def starting(self, flow: flows_pb2.Flow) -> None:
        self.publish("oih.flow.starting",
                     flow_events.FlowStarting(flow=flow, started_by="users/alice"))

    def stopping(self, flow: flows_pb2.Flow) -> None:
        stopped = flows_pb2.Flow()
        stopped.CopyFrom(flow)
        stopped.state = flows_pb2.STATE_STOPPING
        self.publish("oih.flow.stopping", flow_events.FlowStopping(flow=stopped,
                                                                   stopped_by="users/alice"))

    def execute(self, flow: flows_pb2.Flow, data: dict[str, Any], execution_id: str) -> None:
        payload = flow_events.FlowExecute(flow=flow.name, execution_id=execution_id,
                                          source="api")
        json_format.ParseDict(data, payload.data)
        self.publish("oih.flow.execute", payload)

    def answer(self, flow: flows_pb2.Flow, timeout: float = 60.0) -> event_pb2.Event:
        """The next started/stopped/failed event about `flow`."""
        def find() -> event_pb2.Event | None:
            while True:
                method, _properties, body = self.channel.basic_get(self.queue, auto_ack=True)
                if method is None:
                    break
                self.seen.append(event_pb2.Event.FromString(body))
            for event in self.seen:
                if event.subject == flow.name:
                    self.seen.remove(event)
                    return event
            return None
        found: event_pb2.Event = wait_for(find, timeout, f"an answer about {flow.name}")
        return found

    def close(self) -> None:
        self.connection.close()


def python_component(channel: Any, entry_point: str, *functions: str) -> str:
    """Register a public component with a Python entry point; returns its name."""
    from oih.components.v1 import components_pb2 as cpb
    from oih.components.v1 import components_pb2_grpc

    created = components_pb2_grpc.ComponentServiceStub(channel).CreateComponent(
        cpb.CreateComponentRequest(component=cpb.Component(
            display_name=f"test-{uuid.uuid4().hex[:8]}", access=cpb.ACCESS_PUBLIC,
            python_entry_point=cpb.PythonEntryPoint(object_reference=entry_point),
            actions=[cpb.ComponentFunction(name=name) for name in functions])))
    name: str = created.name
    return name
