"""SecretRow ↔ oih.secrets.v1.Secret. The sealed value never leaves the row here: a Secret
message carries metadata and fingerprints only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf import duration_pb2, timestamp_pb2

from oih.secrets.v1 import secrets_pb2 as pb
from oih_secrets.models import SecretRow, utcnow

COLLECTION = "secrets/"


def name(secret_id: str) -> str:
    return COLLECTION + secret_id


def aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back without a zone; they were stored as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(aware(moment))
    return stamp


def secret(row: SecretRow) -> pb.Secret:
    message = pb.Secret(
        name=name(row.id), display_name=row.display_name, description=row.description,
        type=row.type,  # type: ignore[arg-type]
        tenant=row.tenant, owners=row.owners, fingerprint=row.fingerprint,
        rotation_grace_period=duration_pb2.Duration(seconds=row.grace_seconds),
        value_update_time=timestamp(row.value_update_time), etag=row.etag,
        create_time=timestamp(row.create_time), update_time=timestamp(row.update_time),
    )
    expire = row.previous_expire_time
    if row.sealed_previous and expire is not None and aware(expire) > utcnow():
        message.previous_fingerprint = row.previous_fingerprint
        message.previous_expire_time.CopyFrom(timestamp(expire))
    return message


def touch(row: SecretRow) -> None:
    """Mark a change: a new etag makes concurrent writers with the old one fail with ABORTED."""
    row.etag = uuid.uuid4().hex
    row.update_time = utcnow()
