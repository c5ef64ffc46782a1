"""The dead-letter RPCs over the steps' dead-letter queues (oih_dataplane.dead_letters), as protos.

A dead letter's resource id is `{step}.{message}`: the queue to browse is per step, and step
ids cannot contain a dot (oih_dataplane.topology), so the first dot splits it unambiguously.

The caller decides visibility and what runs: `flow_tenant(flow)` gives a flow's tenant (None:
no such flow), `flow_steps(flow)` the step ids whose dead-letter queues exist (those of the
flow version that runs; empty when it does not run), `flows()` the flow ids for `flows/-`.
Replay requires the step among `flow_steps` (the flow runs and still has the step).

Each call opens its own broker connection: these are rare operator calls, and a browse holds
every message it looked at unacked until its channel closes, which must not happen on a
connection shared with long-lived consumers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pika
import pika.exceptions
from google.protobuf import empty_pb2, json_format
from sqlalchemy.engine import Engine
from sqlmodel import Session

from oih.orchestrator.v1 import orchestrator_pb2
from oih_dataplane import dead_letters as queues
from oih_runtime import filtering
from oih_runtime.bus.topology import connection_parameters
from oih_runtime.db import transaction
from oih_runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from oih_runtime.jsontext import parse_object
from oih_runtime.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from oih_runtime.principal import Principal

from .ingest import record_replay, steps_of
from .views import FlowTenant, parse_parent
from .views import to_proto as execution_proto

_NAME = re.compile(r"^flows/(?P<flow>[^/]+)/deadLetters/(?P<step>[^/.]+)\.(?P<message>[^/]+)$")
#: Dead letters browsed per step at most by a list (browsing is linear in the queue).
MAX_BROWSE = 10_000
KIND = "dead_letter"

FlowSteps = Callable[[str], Sequence[str]]


def list_dead_letters(amqp_url: str, principal: Principal,
                      request: orchestrator_pb2.ListDeadLettersRequest, *,
                      flow_tenant: FlowTenant, flow_steps: FlowSteps,
                      flows: Callable[[], Iterable[str]] | None = None
                      ) -> orchestrator_pb2.ListDeadLettersResponse:
    """Oldest first over the steps (and flows) the caller may see."""
    flow_id = parse_parent(request.parent)
    if request.page_size < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    wanted = _filter(request.filter)
    if flow_id == "-":
        candidates = [f for f in (flows() if flows else ()) if _visible(principal, flow_tenant, f)]
    else:
        if not _visible(principal, flow_tenant, flow_id):
            raise NotFound("flow", f"flows/{flow_id}")
        candidates = [flow_id]
    found: list[orchestrator_pb2.DeadLetter] = []
    with _connection(amqp_url) as connection:
        for flow in sorted(candidates):
            for step in flow_steps(flow):
                if "step_id" in wanted and step != wanted["step_id"]:
                    continue
                for letter in _browse(connection, flow, step, MAX_BROWSE):
                    item = to_proto(flow, step, letter)
                    if _matches(item, wanted):
                        found.append(item)
    found.sort(key=lambda item: (item.create_time.ToNanoseconds(), item.name))
    size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    fingerprint = f"{request.parent}|{request.filter}"
    offset = _offset(request.page_token, fingerprint) if request.page_token else 0
    page = found[offset:offset + size]
    more = len(found) > offset + size
    return orchestrator_pb2.ListDeadLettersResponse(
        dead_letters=page, next_page_token=_token(offset + size, fingerprint) if more else "")


def get_dead_letter(amqp_url: str, principal: Principal,
                    request: orchestrator_pb2.GetDeadLetterRequest, *,
                    flow_tenant: FlowTenant, flow_steps: FlowSteps
                    ) -> orchestrator_pb2.DeadLetter:
    flow, step, message = _locate(request.name, principal, flow_tenant)
    with _connection(amqp_url) as connection:
        letter = _quiet(lambda: queues.get_dead_letter(connection, flow, step, message))
    if letter is None:
        raise NotFound(KIND, request.name)
    return to_proto(flow, step, letter)


def discard_dead_letter(amqp_url: str, principal: Principal,
                        request: orchestrator_pb2.DiscardDeadLetterRequest, *,
                        flow_tenant: FlowTenant, flow_steps: FlowSteps) -> empty_pb2.Empty:
    flow, step, message = _locate(request.name, principal, flow_tenant)
    with _connection(amqp_url) as connection:
        if not _quiet(lambda: queues.discard_dead_letter(connection, flow, step, message)):
            raise NotFound(KIND, request.name)
    return empty_pb2.Empty()


def replay_dead_letter(engine: Engine, amqp_url: str, principal: Principal,
                       request: orchestrator_pb2.ReplayDeadLetterRequest, *,
                       flow_tenant: FlowTenant, flow_steps: FlowSteps
                       ) -> orchestrator_pb2.Execution:
    """Publish the input again to its step (attempt 1, same message id, `data` replaced when
    given), remove the dead letter, and mark the execution RUNNING with one more delivery
    owed to the step. The publish is confirmed before the view is updated: a failure between
    the two leaves the view behind, never the message lost."""
    flow, step, message = _locate(request.name, principal, flow_tenant)
    if step not in flow_steps(flow):
        raise FailedPrecondition(f"flow {flow} does not run step {step!r}",
                                 reason="STEP_NOT_RUNNING", subject=f"flows/{flow}")
    data = (parse_object(request.data_json, "data_json") if request.data_json
            else json_format.MessageToDict(request.data) if request.HasField("data") else None)
    with _connection(amqp_url) as connection:
        letter = _quiet(lambda: queues.get_dead_letter(connection, flow, step, message))
        if letter is None or not _quiet(
                lambda: queues.replay_dead_letter(connection, flow, step, message, data)):
            raise NotFound(KIND, request.name)
    execution_id = letter.envelope.headers.execution_id
    if not execution_id:  # a malformed input never belonged to an execution
        return orchestrator_pb2.Execution(flow=f"flows/{flow}")
    with transaction(engine) as session:
        row = record_replay(session, tenant=flow_tenant(flow) or "", flow_id=flow,
                            execution_id=execution_id, step_id=step)
    with Session(engine) as session:
        return execution_proto(row, steps_of(session, row))


def to_proto(flow: str, step: str, letter: queues.DeadLetter) -> orchestrator_pb2.DeadLetter:
    envelope = letter.envelope
    result = orchestrator_pb2.DeadLetter(
        name=f"flows/{flow}/deadLetters/{step}.{letter.message_id}", step_id=step,
        execution=(f"flows/{flow}/executions/{envelope.headers.execution_id}"
                   if envelope.headers.execution_id else ""))
    result.input.CopyFrom(envelope.input)
    result.error.message = envelope.message
    result.error.error_type = envelope.error_type
    result.error.stack = envelope.stack
    result.error.attempt = envelope.attempt
    if envelope.HasField("time"):
        result.error.time.CopyFrom(envelope.time)
        result.create_time.CopyFrom(envelope.time)
    return result


# --- helpers ---------------------------------------------------------------------------------

def _visible(principal: Principal, flow_tenant: FlowTenant, flow: str) -> bool:
    tenant = flow_tenant(flow)
    return tenant is not None and principal.sees_tenant(tenant)


def _locate(name: str, principal: Principal, flow_tenant: FlowTenant
            ) -> tuple[str, str, str]:
    match = _NAME.match(name)
    if match is None:
        raise InvalidArgument.field("name", "must be flows/{flow}/deadLetters/{step}.{message}")
    flow, step, message = match["flow"], match["step"], match["message"]
    if not _visible(principal, flow_tenant, flow):
        raise NotFound(KIND, name)
    return flow, step, message


@contextmanager
def _connection(url: str) -> Iterator[pika.BlockingConnection]:
    connection = pika.BlockingConnection(connection_parameters(url))
    try:
        yield connection
    finally:
        if connection.is_open:
            connection.close()


def _quiet(call: Callable[[], Any]) -> Any:
    """A step whose dead-letter queue is gone (404 closes the channel) has no dead letters."""
    try:
        return call()
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return None
        raise


def _browse(connection: pika.BlockingConnection, flow: str, step: str,
            limit: int) -> list[queues.DeadLetter]:
    return _quiet(lambda: queues.list_dead_letters(connection, flow, step, limit)) or []


def _filter(text: str) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for term in filtering.parse(text):
        if term.field not in ("step_id", "execution", "error_type") or term.op != "=":
            raise InvalidArgument.field(
                "filter", f"cannot filter on {term.field}{term.op}; use step_id=, execution= "
                "or error_type=")
        wanted[term.field] = term.value
    return wanted


def _matches(item: orchestrator_pb2.DeadLetter, wanted: dict[str, str]) -> bool:
    return (wanted.get("execution", item.execution) == item.execution
            and wanted.get("error_type", item.error.error_type) == item.error.error_type)


def _token(offset: int, fingerprint: str) -> str:
    raw = json.dumps({"o": offset, "f": fingerprint}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _offset(token: str, fingerprint: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset, same = int(data["o"]), data["f"] == fingerprint
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidArgument.field("page_token", "not a page token of this list") from None
    if not same or offset < 0:
        raise InvalidArgument.field("page_token", "the page token belongs to another query")
    return offset
