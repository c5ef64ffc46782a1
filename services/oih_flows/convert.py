"""Rows ↔ protos. The graph and webhook settings are stored as their protos' JSON form."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from oih.flows.v1 import flows_pb2
from oih_flows.models import FlowRow
from oih_runtime.clock import timestamp


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def graph(row: FlowRow) -> flows_pb2.Graph:
    return json_format.ParseDict(row.graph, flows_pb2.Graph())


def webhook_settings(row: FlowRow) -> flows_pb2.WebhookSettings:
    return json_format.ParseDict(row.webhook_settings, flows_pb2.WebhookSettings())


def flow(row: FlowRow) -> flows_pb2.Flow:
    message = flows_pb2.Flow(
        name=f"flows/{row.id}", display_name=row.display_name, description=row.description,
        tenant=row.tenant,
        owners=[flows_pb2.Owner(id=o.owner, type=o.owner_type)  # type: ignore[arg-type]
                for o in row.owners],
        state=row.state,  # type: ignore[arg-type]
        state_reason=row.state_reason, graph=graph(row), cron=row.cron,
        version=row.version, revision_id=row.revision_id,
        running_version=row.running_version, started_by=row.started_by, etag=row.etag,
        create_time=timestamp(row.create_time), update_time=timestamp(row.update_time),
    )
    if row.webhook_settings:
        message.webhook_settings.CopyFrom(webhook_settings(row))
    return message


def state_name(state: int) -> str:
    """`STATE_ACTIVE` → `ACTIVE`, for messages and filters."""
    return flows_pb2.State.Name(state).removeprefix("STATE_")  # type: ignore[arg-type]
