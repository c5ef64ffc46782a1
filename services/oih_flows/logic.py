"""The Flow Repository's rules, free of gRPC.

Access (decided for OIH #40, tenant-wide flow access): a flow belongs to a tenant, and every
principal of that tenant may act on it as far as its permissions go (`flows.read`,
`flows.write`, `flows.control`, `flows.execute`, enforced from the contract by the shared
interceptor). Owners record who is responsible for a flow: the creator is added, owners can be
listed and filtered (`owner=`), and a flow whose last owner is deleted is stopped — but
ownership does not narrow access inside the tenant, so a team never loses a flow when its
author leaves. Other tenants' flows answer NOT_FOUND, as if they did not exist; platform
administrators see every flow.

Changing or deleting a flow needs it at rest (INACTIVE or FAILED): the runtime of a running
flow was built from its definition, and editing under it is what made the original's status
drift (OIH #313, #18). Stop, edit, start.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2
from sqlalchemy import exists
from sqlalchemy.engine import Engine
from sqlalchemy.orm.exc import StaleDataError
from sqlmodel import Session, col, select

from oih.events.v1 import flows_pb2 as flow_events
from oih.flows.v1 import flows_pb2
from oih_flows import convert, graph, lifecycle
from oih_flows.graph import ComponentLookup, SecretLookup
from oih_flows.lifecycle import ACTIVE, AT_REST, INACTIVE, STARTING, STOPPING
from oih_flows.models import FlowComponentRow, FlowOwnerRow, FlowRow
from oih_runtime import filtering, names, paging
from oih_runtime.clock import utcnow
from oih_runtime.db import transaction
from oih_runtime.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from oih_runtime.principal import Principal

#: Fields an update may change. Output-only fields in a mask are ignored, as the contract says.
UPDATABLE = {"display_name", "description", "owners", "graph", "cron", "webhook_settings"}
OUTPUT_ONLY = {"name", "tenant", "state", "state_reason", "version", "revision_id",
               "running_version", "started_by", "etag", "create_time", "update_time"}
#: Fields whose change makes a new revision (owners are about people, not about the flow).
DEFINITION = ("display_name", "description", "graph", "cron", "webhook_settings")

OWNER_TYPES = {"user": flows_pb2.OWNER_TYPE_USER,
               "service": flows_pb2.OWNER_TYPE_SERVICE_ACCOUNT}


def flow_id(name: str, field: str = "name") -> str:
    """`flows/abc` → `abc`; anything else is INVALID_ARGUMENT naming `field`."""
    return names.resource_id(name, "flows", field)


@dataclass(frozen=True)
class Definition:
    """The stored form of a flow's changeable fields."""

    display_name: str
    description: str
    owners: list[tuple[str, int]]
    graph: dict[str, Any]
    cron: str
    webhook_settings: dict[str, Any]


class Flows:
    def __init__(self, engine: Engine, components: ComponentLookup,
                 secrets: SecretLookup) -> None:
        self.engine = engine
        self.components = components
        self.secrets = secrets

    # ----------------------------------------------------------------- reading

    @staticmethod
    def _visible(session: Session, caller: Principal, name: str, field: str = "name"
                 ) -> FlowRow:
        row = session.get(FlowRow, flow_id(name, field))
        if row is None or not caller.sees_tenant(row.tenant):
            raise NotFound("flow", name)
        return row

    def get(self, caller: Principal, name: str) -> FlowRow:
        with Session(self.engine) as session:
            return self._visible(session, caller, name)

    def list(self, caller: Principal, page_size: int, page_token: str, filter_text: str,
             order_by: str) -> tuple[Sequence[FlowRow], str]:
        query = select(FlowRow)
        if not caller.is_platform_admin:
            query = query.where(FlowRow.tenant == caller.tenant)
        query = query.where(*filtering.conditions(filter_text, _FILTERS))
        ordering = filtering.order_by(order_by, _ORDER_COLUMNS, [col(FlowRow.create_time)])
        query = query.order_by(*ordering, col(FlowRow.id))  # id: a stable order for paging
        fingerprint = "|".join(("flows", caller.tenant, filter_text, order_by))
        with Session(self.engine) as session:
            return paging.page(session, query, page_size, page_token, fingerprint)

    # ----------------------------------------------------------------- writing

    def _definition(self, flow: flows_pb2.Flow, tenant: str, caller: Principal | None
                    ) -> Definition:
        """Validate `flow` completely (structure, then components) and return what to store."""
        graph.assign_edge_ids(flow.graph)
        violations = graph.check_definition(flow, tenant=tenant)
        violations += graph.check_components(flow.graph, self.components)
        violations += graph.check_secrets(flow, self.secrets, tenant=tenant)
        if violations:
            raise InvalidArgument(violations)
        owners = [(o.id, int(o.type)) for o in flow.owners]
        if caller is not None and caller.subject not in {o for o, _ in owners}:
            owners.insert(0, (caller.subject, OWNER_TYPES.get(caller.typ,
                                                              flows_pb2.OWNER_TYPE_USER)))
        return Definition(
            display_name=flow.display_name.strip(), description=flow.description,
            owners=owners, graph=convert.to_json(flow.graph), cron=flow.cron.strip(),
            webhook_settings=(convert.to_json(flow.webhook_settings)
                              if flow.HasField("webhook_settings") else {}),
        )

    @staticmethod
    def _apply(row: FlowRow, definition: Definition) -> None:
        row.display_name = definition.display_name
        row.description = definition.description
        row.graph = definition.graph
        row.cron = definition.cron
        row.webhook_settings = definition.webhook_settings
        current = {o.owner: o for o in row.owners}
        row.owners = [
            _owner(current.get(owner), row.id, owner, kind, position)
            for position, (owner, kind) in enumerate(definition.owners)
        ]
        used = sorted({n["component"] for n in definition.graph.get("nodes", [])})
        kept = {c.component: c for c in row.components}
        row.components = [kept.get(c) or FlowComponentRow(flow_id=row.id, component=c)
                          for c in used]

    def create(self, caller: Principal, flow: flows_pb2.Flow) -> FlowRow:
        definition = self._definition(flow, caller.tenant, caller)
        now = utcnow()
        row = FlowRow(id=uuid.uuid4().hex, tenant=caller.tenant, state=INACTIVE,
                      display_name="", state_time=now, create_time=now, update_time=now)
        self._apply(row, definition)
        with transaction(self.engine) as session:
            session.add(row)
            session.flush()
            lifecycle.emit_changed(session, row, "created")
        return row

    def update(self, caller: Principal, flow: flows_pb2.Flow, paths: Sequence[str]) -> FlowRow:
        chosen = _mask(flow, paths)
        with Session(self.engine) as session:
            current = self._visible(session, caller, flow.name, "flow.name")
        _check_etag(current, flow.etag)
        _require_at_rest(current, "changed")
        if not chosen:
            return current  # only output-only fields named: nothing to change, no event
        merged = convert.flow(current)
        for path in chosen:
            if path == "graph":
                merged.graph.Clear()  # replaced whole, never merged node by node
                merged.graph.CopyFrom(flow.graph)
            elif path == "webhook_settings":
                merged.ClearField("webhook_settings")
                if flow.HasField("webhook_settings"):
                    merged.webhook_settings.CopyFrom(flow.webhook_settings)
            elif path == "owners":
                del merged.owners[:]
                merged.owners.extend(flow.owners)
            else:
                setattr(merged, path, getattr(flow, path))
        # Validated outside the transaction: it calls the Component Repository.
        definition = self._definition(merged, current.tenant, None)
        try:
            with transaction(self.engine) as session:
                row = self._visible(session, caller, flow.name, "flow.name")
                # Somebody changed it while we validated: the etag guard below would catch a
                # write in between, this catches one before we re-read.
                _check_etag(row, current.etag)
                before = {f: getattr(row, f) for f in DEFINITION}
                self._apply(row, definition)
                if any(getattr(row, f) != before[f] for f in DEFINITION):
                    row.version += 1
                    row.revision_id = uuid.uuid4().hex
                row.update_time = utcnow()
                session.add(row)
                session.flush()
                lifecycle.emit_changed(session, row, "updated")
        except StaleDataError:
            raise _changed_meanwhile(flow.name) from None
        return row

    def delete(self, caller: Principal, name: str, etag: str) -> None:
        try:
            with transaction(self.engine) as session:
                row = self._visible(session, caller, name)
                _check_etag(row, etag)
                _require_at_rest(row, "deleted")
                lifecycle.emit_changed(session, row, "deleted")
                session.delete(row)
        except StaleDataError:
            raise _changed_meanwhile(name) from None

    # ----------------------------------------------------------------- lifecycle

    def start(self, caller: Principal, name: str) -> FlowRow:
        try:
            with transaction(self.engine) as session:
                row = self._visible(session, caller, name)
                if row.state in (STARTING, ACTIVE):
                    return row  # already on its way: starting twice changes nothing
                if row.state == STOPPING:
                    raise FailedPrecondition(
                        f"flow {name} is STOPPING; start it once it is INACTIVE (a stop that "
                        "does not finish turns the flow FAILED, which can be started)",
                        reason="FLOW_STOPPING", subject=name)
                lifecycle.start(session, row, caller.subject)
        except StaleDataError:
            raise _changed_meanwhile(name) from None
        return row

    def stop(self, caller: Principal, name: str) -> FlowRow:
        """Stop from any state. Stopping a STOPPING flow asks the runtime again and restarts
        the transition timeout: it is how a user nudges a stop whose event got lost."""
        try:
            with transaction(self.engine) as session:
                row = self._visible(session, caller, name)
                if row.state == INACTIVE:
                    return row
                lifecycle.stop(session, row, caller.subject)
        except StaleDataError:
            raise _changed_meanwhile(name) from None
        return row

    def execute(self, caller: Principal, name: str, data: struct_pb2.Struct) -> str:
        problems = graph.non_finite(data, "data")
        if problems:
            raise InvalidArgument(problems)
        execution_id = str(uuid.uuid4())
        with transaction(self.engine) as session:
            row = self._visible(session, caller, name)
            if row.state != ACTIVE:
                raise FailedPrecondition(
                    f"flow {name} is {convert.state_name(row.state)}; only an ACTIVE flow can "
                    "run (start it first)", reason="FLOW_NOT_ACTIVE", subject=name)
            lifecycle.OUTBOX.add(
                session, "oih.flow.execute",
                flow_events.FlowExecute(flow=name, execution_id=execution_id, data=data,
                                        source="api"),
                tenant=row.tenant, subject=name,
            )
        return f"{name}/executions/{execution_id}"


# --------------------------------------------------------------------------- helpers

def _owner(existing: FlowOwnerRow | None, flow: str, owner: str, kind: int,
           position: int) -> FlowOwnerRow:
    row = existing or FlowOwnerRow(flow_id=flow, owner=owner, owner_type=kind)
    row.owner_type = kind
    row.position = position
    return row


def _mask(flow: flows_pb2.Flow, paths: Sequence[str]) -> list[str]:
    if paths:
        unknown = [p for p in paths if p not in UPDATABLE | OUTPUT_ONLY]
        if unknown:
            raise InvalidArgument.field(
                "update_mask", f"cannot update {', '.join(unknown)}; allowed: "
                               f"{', '.join(sorted(UPDATABLE))} (graph is replaced whole)")
        return [p for p in paths if p in UPDATABLE]
    # An empty mask means "the fields that are set" (Envoy's transcoder sends none).
    chosen = [f for f in ("display_name", "description", "cron") if getattr(flow, f)]
    chosen += [f for f in ("graph", "webhook_settings") if flow.HasField(f)]
    return chosen + (["owners"] if flow.owners else [])


def _check_etag(row: FlowRow, etag: str) -> None:
    if etag and etag != row.etag:
        raise Aborted(f"flow flows/{row.id} was changed meanwhile (etag {etag!r} is stale); "
                      "read it again", reason="ETAG_MISMATCH")


def _changed_meanwhile(name: str) -> Aborted:
    return Aborted(f"flow {name} was changed by someone else meanwhile; read it again",
                   reason="CONCURRENT_CHANGE")


def _require_at_rest(row: FlowRow, verb: str) -> None:
    if row.state not in AT_REST:
        name = f"flows/{row.id}"
        raise FailedPrecondition(
            f"flow {name} is {convert.state_name(row.state)} and cannot be {verb}; stop it "
            "first (only INACTIVE or FAILED flows can be changed or deleted)",
            reason="FLOW_NOT_AT_REST", subject=name)


# --------------------------------------------------------------------------- list filters

_STATES = {convert.state_name(s): s for s in flows_pb2.State.values() if s}


def _state(op: str, value: str) -> Any:
    if op not in ("=", "!="):
        raise ValueError("use = or !=")
    if value.upper() not in _STATES:
        raise ValueError(f"one of {', '.join(_STATES)}")
    return filtering.compare(col(FlowRow.state), op, _STATES[value.upper()])


def _display_name(op: str, value: str) -> Any:
    if op not in ("=", "!=", ":"):
        raise ValueError("use =, != or :")
    return filtering.compare(col(FlowRow.display_name), op, value)


def _has_cron(op: str, value: str) -> Any:
    if op != "=" or value not in ("true", "false"):
        raise ValueError("use has_cron=true or has_cron=false")
    return col(FlowRow.cron) != "" if value == "true" else col(FlowRow.cron) == ""


def _owner_filter(op: str, value: str) -> Any:
    if op != "=":
        raise ValueError("use owner=\"users/…\"")
    return exists().where(col(FlowOwnerRow.flow_id) == col(FlowRow.id),
                          col(FlowOwnerRow.owner) == value)


def _component_filter(op: str, value: str) -> Any:
    if op != "=":
        raise ValueError("use component=\"components/…\"")
    return exists().where(col(FlowComponentRow.flow_id) == col(FlowRow.id),
                          col(FlowComponentRow.component) == value)


_FILTERS = {"state": _state, "display_name": _display_name, "has_cron": _has_cron,
            "owner": _owner_filter, "component": _component_filter}
_ORDER_COLUMNS = {"display_name": col(FlowRow.display_name),
                  "create_time": col(FlowRow.create_time),
                  "update_time": col(FlowRow.update_time)}
