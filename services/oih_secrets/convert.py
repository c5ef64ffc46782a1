"""SecretRow ↔ oih.secrets.v1.Secret. The sealed value never leaves the row here: a Secret
message carries metadata and fingerprints only."""

from __future__ import annotations

import uuid

from google.protobuf import duration_pb2

from oih.secrets.v1 import secrets_pb2 as pb
from oih_runtime import names
from oih_runtime.clock import aware, timestamp, utcnow
from oih_secrets.models import SecretRow

COLLECTION = "secrets"


def name(secret_id: str) -> str:
    return names.name(COLLECTION, secret_id)


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
