"""Consuming workers' snapshot writes from the platform's snapshots queue.

A write is the JSON form of `oih.snapshots.v1.Snapshot` (`name`, `executionId`, `data`,
`sequence`) published by a worker on its flow's exchange with the `snapshot` key. Which flow
wrote it comes from the exchange it was routed through (a worker's broker user may publish
only to its own flow's exchange), never from the body; a body naming another flow is refused.
The flow's tenant comes from the flow events (`FlowRow`), or, for a flow this service has not
heard of (created before it ran), from the Flow Repository (`FlowTenants`).

Each write is applied in a transaction (`logic.apply_write`, which drops writes older than the
stored one) and acked after the commit: a crash redelivers it, and the sequence makes the second
delivery a no-op. A write the service cannot place now (the Flow Repository or the database is
unavailable) is requeued after a pause; a malformed write, or one for a flow that does not exist,
is logged and dropped (retrying cannot repair it).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import grpc
import pika
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from oih.flows.v1 import flows_pb2, flows_pb2_grpc
from oih_dataplane import topology
from oih_runtime.background import Reconnecting
from oih_runtime.bus.topology import connection_parameters
from oih_runtime.db import transaction

from . import logic

log = logging.getLogger(__name__)

PREFETCH = 50
RETRY_PAUSE = 1.0


class Malformed(ValueError):
    """A write that cannot be applied, ever."""


class NotYet(Exception):
    """A write that may be applied later (the flow's tenant is not known yet)."""


def parse_write(exchange: str, body: bytes) -> tuple[logic.Key, dict[str, Any], int]:
    flow_id = topology.flow_of_exchange(exchange)
    if flow_id is None:
        raise Malformed(f"snapshot from exchange {exchange!r}, not a flow's")
    try:
        raw = json.loads(body)
    except ValueError:
        raise Malformed("body is not JSON") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
        raise Malformed("body is not a snapshot with an object `data`")
    sequence = raw.get("sequence")
    if isinstance(sequence, str) and sequence.isdigit():
        sequence = int(sequence)  # proto3 JSON writes int64 as a string
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence <= 0:
        raise Malformed("`sequence` must be a positive integer")
    try:
        key = logic.key_of(str(raw.get("name", "")), str(raw.get("executionId", "")), "name")
    except Exception as error:
        raise Malformed(f"bad snapshot name: {error}") from None
    if key.flow_id != flow_id:
        raise Malformed(f"a worker of flows/{flow_id} wrote {key.name}")
    if len(body) > logic.MAX_BYTES + 4096:
        raise Malformed("snapshot larger than 1 MiB")
    return key, raw["data"], sequence


#: The tenant of a flow from the Flow Repository: None when the flow does not exist; raises
#: NotYet when it cannot tell now.
TenantLookup = Callable[[str], "str | None"]


class FlowTenants:
    """Asks the Flow Repository (GetFlow, with the service's token) for a flow's tenant."""

    def __init__(self, channel: grpc.Channel, timeout: float = 5.0) -> None:
        self.stub = flows_pb2_grpc.FlowServiceStub(channel)
        self.timeout = timeout

    def __call__(self, flow_id: str) -> str | None:
        try:
            flow = self.stub.GetFlow(flows_pb2.GetFlowRequest(name=f"flows/{flow_id}"),
                                     timeout=self.timeout)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise NotYet(f"the Flow Repository did not answer: {error.code()}") from None
        return str(flow.tenant)


def _unknown(flow_id: str) -> str | None:
    raise NotYet(f"flows/{flow_id} is not known yet")


def apply(engine: Engine, exchange: str, body: bytes, lookup: TenantLookup = _unknown) -> bool:
    """Apply one delivered write; True when it changed the stored snapshot."""
    key, data, sequence = parse_write(exchange, body)
    with Session(engine) as session:
        tenant = logic.flow_tenant(session, key.flow_id)
    if tenant is None:  # asked outside the write transaction (a remote call)
        tenant = lookup(key.flow_id)
        if tenant is None:
            raise Malformed(f"flows/{key.flow_id} does not exist")
    with transaction(engine, lock=True) as session:
        logic.remember_flow(session, key.flow_id, tenant)
        return logic.apply_write(session, key, tenant, data, sequence)


class SnapshotConsumer(Reconnecting):
    """A daemon thread consuming the snapshots queue, reconnecting with back-off."""

    def __init__(self, engine: Engine, url: str, queue: str,
                 lookup: TenantLookup = _unknown) -> None:
        super().__init__("oih-snapshots-ingest", self._consume)
        self.engine = engine
        self.lookup = lookup
        self.url = url
        self.queue = queue
        self.ready = threading.Event()

    def _consume(self) -> None:
        connection = pika.BlockingConnection(connection_parameters(self.url))
        try:
            channel = connection.channel()
            channel.queue_declare(self.queue, durable=True)
            channel.basic_qos(prefetch_count=PREFETCH)
            channel.basic_consume(self.queue, self._on_message)
            self.connected()
            self.ready.set()
            while not self.stopping.is_set() and connection.is_open:
                connection.process_data_events(time_limit=0.5)
        finally:
            if connection.is_open:
                connection.close()

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            apply(self.engine, method.exchange, body, self.lookup)
        except Malformed as error:
            log.error("dropped a snapshot write: %s", error)
        except (NotYet, SQLAlchemyError) as error:
            log.warning("snapshot write postponed: %r", error)
            self.stopping.wait(RETRY_PAUSE)
            channel.basic_nack(method.delivery_tag, requeue=True)
            return
        channel.basic_ack(method.delivery_tag)
