"""The executions view against the real RabbitMQ: the ReportsConsumer and the dead-letter RPCs."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from google.protobuf import json_format
from sqlalchemy.engine import Engine
from sqlmodel import Session

from oih.component.v1 import message_pb2
from oih.orchestrator.v1 import orchestrator_pb2
from oih_cli.broker import broker_answers
from oih_dataplane import envelope, topology
from oih_dataplane.spec import EdgeSpec, RetrySpec, StepSpec
from oih_orchestrator.executions import (
    ExecutionRow,
    ReportsConsumer,
    discard_dead_letter,
    get_dead_letter,
    list_dead_letters,
    replay_dead_letter,
)
from oih_orchestrator.server import TABLES
from oih_runtime.db import make_engine
from oih_runtime.errors import FailedPrecondition, NotFound
from oih_runtime.principal import Principal
from oih_sdk import Message, non_retryable
from oih_worker.process import StepProcessor

URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
T1, T2 = "tenants/t1", "tenants/t2"
ALICE = Principal("users/alice", T1, frozenset({"flows.read", "flows.control"}))
BOB = Principal("users/bob", T2, frozenset({"flows.read", "flows.control"}))
Execution = orchestrator_pb2.Execution

pytestmark = pytest.mark.skipif(not broker_answers(URL), reason="no RabbitMQ on 127.0.0.1:5672")


def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'orch.db'}", tables=TABLES)
    yield engine
    engine.dispose()


@pytest.fixture
def channel() -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    channel.confirm_delivery()
    yield channel
    connection.close()


@pytest.fixture
def flow(channel: Any) -> Iterator[str]:
    """A declared two-step flow `a → b`; deleted afterwards."""
    flow_id = f"test-exec-{uuid.uuid4().hex[:8]}"
    topology.declare_flow(channel, flow_id, {"a": 1, "b": 1})
    yield flow_id
    topology.delete_flow(channel, flow_id, ["a", "b"])


def specs(flow_id: str) -> list[StepSpec]:
    return [StepSpec(flow_id, "a", "m:c", "run", edges=[EdgeSpec("b")]),
            StepSpec(flow_id, "b", "m:c", "run")]


def publish_report(channel: Any, flow_id: str, *reports: message_pb2.StepReport,
                   batch_id: str = "") -> None:
    batch = message_pb2.StepReportBatch(id=batch_id or str(uuid.uuid4()), worker="w",
                                        reports=reports)
    channel.basic_publish(topology.exchange_name(flow_id), topology.REPORTS_KEY,
                          json_format.MessageToJson(batch, indent=None).encode(),
                          pika.BasicProperties(content_type="application/json", delivery_mode=2),
                          mandatory=True)


def execution_row(engine: Engine, flow_id: str, execution_id: str) -> ExecutionRow | None:
    with Session(engine) as session:
        return session.get(ExecutionRow, (flow_id, execution_id))


# --- ReportsConsumer -------------------------------------------------------------------------

def test_consumer_merges_published_batches_and_settles_the_execution(
        engine: Engine, channel: Any, flow: str) -> None:
    consumer = ReportsConsumer(engine, URL, poll_seconds=0.05, retry_seconds=0.2)
    consumer.follow(flow, T1, specs(flow))
    consumer.start()
    try:
        wait_for(lambda: consumer.following(flow), what="the consumer to subscribe")
        publish_report(channel, flow, message_pb2.StepReport(
            flow_id=flow, step_id="a", execution_id="e1", messages_in=1, messages_out=1,
            messages_routed=1),
            batch_id="same")
        publish_report(channel, flow, message_pb2.StepReport(  # a duplicate: ignored
            flow_id=flow, step_id="a", execution_id="e1", messages_in=1, messages_out=1),
            batch_id="same")
        row = wait_for(lambda: execution_row(engine, flow, "e1"), what="the execution row")
        assert row.tenant == T1 and row.state == "RUNNING"
        publish_report(channel, flow, message_pb2.StepReport(
            flow_id=flow, step_id="b", execution_id="e1", messages_in=1))
        wait_for(lambda: execution_row(engine, flow, "e1").state == "SUCCEEDED",  # type: ignore[union-attr]
                 what="SUCCEEDED")
        # Everything was acked: the queue is empty.
        wait_for(lambda: channel.queue_declare(topology.reports_queue(flow), passive=True)
                 .method.message_count == 0, what="acks")
    finally:
        consumer.stop()


def test_consumer_waits_for_a_queue_that_does_not_exist_yet_and_unfollows(
        engine: Engine, channel: Any) -> None:
    flow_id = f"test-exec-{uuid.uuid4().hex[:8]}"
    consumer = ReportsConsumer(engine, URL, poll_seconds=0.05, retry_seconds=0.1)
    consumer.follow(flow_id, T1)
    consumer.start()
    try:
        time.sleep(0.3)
        assert not consumer.following(flow_id)
        topology.declare_flow(channel, flow_id, {"a": 0})
        try:
            wait_for(lambda: consumer.following(flow_id), what="a late subscription")
            consumer.unfollow(flow_id)
            wait_for(lambda: not consumer.following(flow_id), what="unfollow")
            publish_report(channel, flow_id, message_pb2.StepReport(
                flow_id=flow_id, step_id="a", execution_id="e1", messages_in=1))
            time.sleep(0.3)
            assert execution_row(engine, flow_id, "e1") is None
            assert channel.queue_declare(topology.reports_queue(flow_id), passive=True
                                         ).method.message_count == 1
        finally:
            topology.delete_flow(channel, flow_id, ["a"])
    finally:
        consumer.stop()


def test_consumer_resubscribes_after_its_queue_was_deleted_and_declared_again(
        engine: Engine, channel: Any) -> None:
    flow_id = f"test-exec-{uuid.uuid4().hex[:8]}"
    topology.declare_flow(channel, flow_id, {"a": 0})
    consumer = ReportsConsumer(engine, URL, poll_seconds=0.05, retry_seconds=0.1)
    consumer.follow(flow_id, T1)
    consumer.start()
    try:
        wait_for(lambda: consumer.following(flow_id), what="subscription")
        topology.delete_flow(channel, flow_id, ["a"])
        wait_for(lambda: not consumer.following(flow_id), what="the broker's cancel")
        topology.declare_flow(channel, flow_id, {"a": 0})
        wait_for(lambda: consumer.following(flow_id), what="resubscription")
        publish_report(channel, flow_id, message_pb2.StepReport(
            flow_id=flow_id, step_id="a", execution_id="e2", messages_in=1))
        wait_for(lambda: execution_row(engine, flow_id, "e2"), what="the row")
    finally:
        consumer.stop()
        topology.delete_flow(channel, flow_id, ["a"])


# --- dead letters ----------------------------------------------------------------------------

@non_retryable
class Rejected(Exception):
    pass


def _fail(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> None:
    raise Rejected(f"cannot take {message.data}")


def dead_letter(channel: Any, flow_id: str, step: str, data: dict[str, Any],
                execution_id: str = "e1") -> str:
    """Make the worker's processor fail a message and publish what it owes: the dead letter."""
    spec = StepSpec(flow_id, step, "unused:unused", "run", retry=RetrySpec(max_attempts=1))
    processor = StepProcessor(spec, fn=_fail)
    message = Message(data=data, id=str(uuid.uuid4()), flow_id=flow_id, step_id=step,
                      execution_id=execution_id, parent_message_id="p1", trace=["a"])
    outcome = processor.handle(envelope.encode(message), envelope.properties_of(message))
    assert outcome.error_envelope is not None and len(outcome.outgoing) == 1
    for out in outcome.outgoing:
        channel.basic_publish(topology.exchange_name(flow_id), out.routing_key, out.body,
                              out.properties, mandatory=True)
    return message.id


def lookups(flow_id: str) -> dict[str, Any]:
    return {"flow_tenant": {flow_id: T1}.get,
            "flow_steps": lambda f: ["a", "b"] if f == flow_id else []}


def test_dead_letters_list_get_discard(channel: Any, flow: str) -> None:
    first = dead_letter(channel, flow, "b", {"n": 1})
    second = dead_letter(channel, flow, "b", {"n": 2}, execution_id="e2")
    page = list_dead_letters(URL, ALICE, orchestrator_pb2.ListDeadLettersRequest(
        parent=f"flows/{flow}", page_size=1), **lookups(flow))
    assert [d.name for d in page.dead_letters] == [f"flows/{flow}/deadLetters/b.{first}"]
    rest = list_dead_letters(URL, ALICE, orchestrator_pb2.ListDeadLettersRequest(
        parent=f"flows/{flow}", page_size=1, page_token=page.next_page_token), **lookups(flow))
    assert [d.name for d in rest.dead_letters] == [f"flows/{flow}/deadLetters/b.{second}"]
    assert rest.next_page_token == ""
    only = list_dead_letters(URL, ALICE, orchestrator_pb2.ListDeadLettersRequest(
        parent=f"flows/{flow}", filter=f'execution="flows/{flow}/executions/e2"'),
        **lookups(flow))
    assert len(only.dead_letters) == 1

    name = f"flows/{flow}/deadLetters/b.{first}"
    got = get_dead_letter(URL, ALICE, orchestrator_pb2.GetDeadLetterRequest(name=name),
                          **lookups(flow))
    assert got.step_id == "b" and got.execution == f"flows/{flow}/executions/e1"
    assert got.error.error_type == "Rejected" and got.error.attempt == 1
    assert dict(got.input.data) == {"n": 1.0}
    with pytest.raises(NotFound):  # another tenant's flow: not found, not forbidden
        get_dead_letter(URL, BOB, orchestrator_pb2.GetDeadLetterRequest(name=name),
                        **lookups(flow))

    discard_dead_letter(URL, ALICE, orchestrator_pb2.DiscardDeadLetterRequest(name=name),
                        **lookups(flow))
    with pytest.raises(NotFound):
        get_dead_letter(URL, ALICE, orchestrator_pb2.GetDeadLetterRequest(name=name),
                        **lookups(flow))
    left = list_dead_letters(URL, ALICE, orchestrator_pb2.ListDeadLettersRequest(
        parent="flows/-"), flows=lambda: [flow, "other"], **lookups(flow))
    assert len(left.dead_letters) == 1


def test_replay_sends_edited_data_to_the_failed_steps_input(
        engine: Engine, channel: Any, flow: str) -> None:
    message_id = dead_letter(channel, flow, "b", {"n": 1})
    name = f"flows/{flow}/deadLetters/b.{message_id}"
    request = orchestrator_pb2.ReplayDeadLetterRequest(name=name)
    request.data.update({"n": 2, "fixed": True})
    execution = replay_dead_letter(engine, URL, ALICE, request, **lookups(flow))
    assert execution.name == f"flows/{flow}/executions/e1"
    assert execution.state == Execution.STATE_RUNNING

    _method, properties, body = wait_for(
        lambda: (lambda got: got if got[0] else None)(
            channel.basic_get(topology.step_queue(flow, "b"), auto_ack=True)),
        what="the replayed message")
    assert json_format.Parse(body, message_pb2.Message(), ignore_unknown_fields=True).data == \
        request.data
    headers = properties.headers
    assert headers[envelope.H_MESSAGE] == message_id and headers[envelope.H_ATTEMPT] == 1
    assert headers[envelope.H_EXECUTION] == "e1" and headers[envelope.H_TRACE] == ["a"]
    with pytest.raises(NotFound):  # replayed: the dead letter is gone
        get_dead_letter(URL, ALICE, orchestrator_pb2.GetDeadLetterRequest(name=name),
                        **lookups(flow))


def _steps(running: list[str]) -> Callable[[str], list[str]]:
    return lambda _flow: running


def test_replay_needs_the_flow_to_run_the_step(engine: Engine, channel: Any, flow: str) -> None:
    message_id = dead_letter(channel, flow, "b", {"n": 1})
    name = f"flows/{flow}/deadLetters/b.{message_id}"
    for running in ([], ["a"]):  # the flow is stopped, or its running version lost step b
        with pytest.raises(FailedPrecondition):
            replay_dead_letter(engine, URL, ALICE,
                               orchestrator_pb2.ReplayDeadLetterRequest(name=name),
                               flow_tenant={flow: T1}.get, flow_steps=_steps(running))
    with pytest.raises(NotFound):
        replay_dead_letter(engine, URL, BOB, orchestrator_pb2.ReplayDeadLetterRequest(name=name),
                           **lookups(flow))
    # Nothing was published or removed.
    assert get_dead_letter(URL, ALICE, orchestrator_pb2.GetDeadLetterRequest(name=name),
                           **lookups(flow)).step_id == "b"
    assert channel.queue_declare(topology.step_queue(flow, "b"), passive=True
                                 ).method.message_count == 0


def test_get_of_an_unknown_dead_letter_is_not_found(channel: Any, flow: str) -> None:
    for name in (f"flows/{flow}/deadLetters/b.nope", f"flows/{flow}/deadLetters/zz.nope"):
        with pytest.raises(NotFound):
            get_dead_letter(URL, ALICE, orchestrator_pb2.GetDeadLetterRequest(name=name),
                            **lookups(flow))


# --- broker restarts -------------------------------------------------------------------------

class _Proxy:
    """A TCP forwarder to the broker whose connections can be cut, as a broker restart does."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.upstream = upstream
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self.lock:
                self.sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            doomed, self.sockets = self.sockets, []
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.server.close()
        self.cut()


def test_consumer_reconnects_after_the_broker_connection_is_lost(
        engine: Engine, channel: Any, flow: str) -> None:
    proxy = _Proxy()
    consumer = ReportsConsumer(engine, f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F",
                               poll_seconds=0.05, retry_seconds=0.1, reconnect_initial=0.1)
    consumer.follow(flow, T1, specs(flow))
    consumer.start()
    try:
        wait_for(lambda: consumer.following(flow), what="subscription")
        proxy.cut()
        wait_for(lambda: not consumer.following(flow), what="the consumer to notice")
        wait_for(lambda: consumer.following(flow), what="reconnection")
        publish_report(channel, flow, message_pb2.StepReport(
            flow_id=flow, step_id="a", execution_id="e3", messages_in=1, messages_out=1))
        wait_for(lambda: execution_row(engine, flow, "e3"), what="the row after reconnecting")
    finally:
        consumer.stop()
        proxy.close()
