"""The Secrets service's rules, free of gRPC: create, read, list, change (rotate), delete,
resolve, and re-wrapping every data key under a new master key.

Errors, in the order they are decided: a malformed name or bad input → INVALID_ARGUMENT; a
secret of another tenant → NOT_FOUND (its existence does not leak); a stale etag → ABORTED.
Values leave this module only through `resolve`, which only a service token holding
"secrets.resolve" by name may call; no error message, log line or event quotes a value.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import field_mask_pb2, json_format
from sqlalchemy import String, cast
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from oih.secrets.v1 import secrets_pb2 as pb
from oih_runtime import crypto, filtering, names, paging
from oih_runtime.clock import aware, utcnow
from oih_runtime.db import transaction
from oih_runtime.errors import Aborted, DataLoss, InvalidArgument, NotFound, PermissionDenied
from oih_runtime.principal import Principal
from oih_secrets import convert, values
from oih_secrets.events import CREATED, DELETED, RESOLVED, UPDATED, announce, audit_resolve
from oih_secrets.models import SecretRow

log = logging.getLogger(__name__)

RESOLVE = "secrets.resolve"
UPDATABLE = frozenset({"display_name", "description", "type", "value", "owners",
                       "rotation_grace_period"})
DEFAULT_GRACE = timedelta(hours=1)
MAX_GRACE = timedelta(days=30)
#: Rows re-wrapped per transaction by `rotate_master_key` (short transactions: no downtime).
REWRAP_BATCH = 100


def secret_id(resource_name: str, field: str) -> str:
    """`secrets/abc` → `abc`; anything else is INVALID_ARGUMENT naming `field`."""
    return names.resource_id(resource_name, convert.COLLECTION, field)


def context(row: SecretRow) -> bytes:
    """The associated data that binds a sealed value to its record: name and tenant."""
    return f"{convert.name(row.id)}|{row.tenant}".encode()


# --- list filters and order --------------------------------------------------------------------

def _type(op: str, value: str) -> Any:
    try:
        number = pb.Secret.Type.Value(value if value.startswith("TYPE_") else f"TYPE_{value}")
    except ValueError:
        raise ValueError("use API_KEY, BASIC_AUTH, BEARER_TOKEN, HMAC_KEY or JSON") from None
    if op not in ("=", "!="):
        raise ValueError("only = and != apply")
    return filtering.compare(col(SecretRow.type), op, number)


def _text(column: Any) -> filtering.Condition:
    return lambda op, value: filtering.compare(column, op, value)


def _owner(op: str, value: str) -> Any:
    if op != "=":
        raise ValueError("only = applies")
    # Owners are a short JSON array of names: match the quoted name inside its text.
    return cast(col(SecretRow.owners), String).contains(f'"{value}"', autoescape=True)


FILTERS: dict[str, filtering.Condition] = {
    "type": _type,
    "display_name": _text(col(SecretRow.display_name)),
    "tenant": _text(col(SecretRow.tenant)),
    "owner": _owner,
}
ORDER = {"display_name": col(SecretRow.display_name),
         "create_time": col(SecretRow.create_time),
         "update_time": col(SecretRow.update_time)}


@dataclass(frozen=True)
class Resolved:
    """A value for a platform service; `repr` leaves the values out (a stray log line)."""

    name: str
    type: int
    value: bytes = field(repr=False)
    previous_value: bytes = field(repr=False)


class Secrets:
    def __init__(self, engine: Engine, keyring: crypto.Keyring) -> None:
        self.engine = engine
        self.keyring = keyring

    # --- create / read ---------------------------------------------------------------------

    def create(self, caller: Principal, requested: pb.Secret) -> SecretRow:
        secret = pb.Secret()
        secret.CopyFrom(requested)
        if caller.subject not in secret.owners:
            secret.owners.append(caller.subject)
        _check(secret, "secret", value_required=True)
        row = SecretRow(id=uuid.uuid4().hex, tenant=caller.tenant, type=secret.type,
                        display_name=secret.display_name, sealed_value="", fingerprint="",
                        etag=uuid.uuid4().hex)
        _fill(row, secret)
        self._set_value(row, secret.value)
        with transaction(self.engine) as session:
            session.add(row)
            announce(session, CREATED, row, caller.subject)
        return row

    def get(self, caller: Principal, resource_name: str) -> SecretRow:
        with Session(self.engine) as session:
            return _visible(session, caller, secret_id(resource_name, "name"))

    def list(self, caller: Principal, page_size: int, page_token: str, filter_text: str,
             order_by: str) -> tuple[Sequence[SecretRow], str]:
        query = select(SecretRow).where(*filtering.conditions(filter_text, FILTERS))
        if not caller.is_platform_admin:
            query = query.where(col(SecretRow.tenant) == caller.tenant)
        query = query.order_by(*filtering.order_by(order_by, ORDER, [ORDER["create_time"]]),
                               col(SecretRow.id))  # a total order: pages neither skip nor repeat
        fingerprint = hashlib.sha256(f"{filter_text}\n{order_by}".encode()).hexdigest()[:16]
        with Session(self.engine) as session:
            return paging.page(session, query, page_size, page_token, fingerprint)

    # --- change ----------------------------------------------------------------------------

    def update(self, caller: Principal, requested: pb.Secret,
               mask: field_mask_pb2.FieldMask) -> SecretRow:
        key = secret_id(requested.name, "secret.name")
        paths = _paths(requested, mask)
        with transaction(self.engine, lock=True) as session:
            row = _changeable(session, caller, key, requested.etag)
            merged = convert.secret(row)
            field_mask_pb2.FieldMask(paths=paths).MergeMessage(
                requested, merged, replace_message_field=True, replace_repeated_field=True)
            rotating = "value" in paths
            if "type" in paths and merged.type != row.type and not rotating:
                raise InvalidArgument.field("secret.value", "a new type needs a new value")
            _check(merged, "secret", value_required=rotating)
            _fill(row, merged)
            if rotating:
                self._rotate(row, merged.value)
            convert.touch(row)
            session.add(row)
            announce(session, UPDATED, row, caller.subject)
        return row

    def delete(self, caller: Principal, resource_name: str, etag: str) -> None:
        key = secret_id(resource_name, "name")
        with transaction(self.engine, lock=True) as session:
            row = _changeable(session, caller, key, etag)
            announce(session, DELETED, row, caller.subject)
            session.delete(row)

    # --- values ----------------------------------------------------------------------------

    def _set_value(self, row: SecretRow, value: Any) -> None:
        plaintext = values.encode(json_format.MessageToDict(value))
        row.sealed_value = crypto.seal(self.keyring, plaintext, context(row))
        row.fingerprint = crypto.fingerprint(self.keyring, row.sealed_value, context(row))
        row.value_update_time = utcnow()

    def _rotate(self, row: SecretRow, value: Any) -> None:
        """The current value becomes the previous one for the grace period, then `value`."""
        grace = timedelta(seconds=row.grace_seconds)
        if grace > timedelta(0):
            row.sealed_previous, row.previous_fingerprint = row.sealed_value, row.fingerprint
            row.previous_expire_time = utcnow() + grace
        else:
            _forget_previous(row)
        self._set_value(row, value)

    def resolve(self, caller: Principal, resource_name: str, tenant: str,
                flow: str) -> Resolved:
        """The value for a platform service acting for a flow of `tenant`; audited."""
        if caller.typ != "service" or RESOLVE not in caller.permissions:
            # Held by name on a service token: "all" (administrators) is not enough.
            raise PermissionDenied("only platform services may resolve secret values",
                                   reason="NOT_A_PLATFORM_SERVICE")
        key = secret_id(resource_name, "name")
        names.resource_id(tenant, "tenants", "tenant")
        if flow:
            names.resource_id(flow, "flows", "flow")
        with transaction(self.engine) as session:
            row = session.get(SecretRow, key)
            if row is None or row.tenant != tenant:
                raise NotFound("secret", resource_name)
            try:
                value = crypto.unseal(self.keyring, row.sealed_value, context(row))
                previous = b""
                if row.sealed_previous and _previous_lasts(row):
                    previous = crypto.unseal(self.keyring, row.sealed_previous, context(row))
            except crypto.DecryptionError:
                log.error("a stored secret value does not decrypt",
                          extra={"secret": resource_name, "tenant": tenant})
                raise DataLoss(f"the stored value of {resource_name} does not decrypt "
                               "(moved, tampered with, or its master key is gone)",
                               reason="SECRET_UNDECRYPTABLE") from None
            audit_resolve(session, row, caller.subject, flow)
        log.info("secret resolved", extra={
            "event": RESOLVED, "secret": resource_name, "tenant": tenant, "flow": flow,
            "actor": caller.subject, "fingerprint": row.fingerprint})
        return Resolved(resource_name, row.type, value, previous)

    def rotate_master_key(self) -> tuple[str, int, Sequence[str]]:
        """Re-wrap every data key under the newest master key, a batch of rows per short
        transaction, so reads and writes go on meanwhile. Returns the key id, how many rows
        were re-wrapped, and the names of those that do not decrypt (left as they are)."""
        active = self.keyring.active_id
        done = 0
        failed: builtins.list[str] = []  # `list` is a method of this class
        after = ""
        while True:
            with transaction(self.engine, lock=True) as session:
                rows = session.exec(select(SecretRow).where(col(SecretRow.id) > after)
                                    .order_by(col(SecretRow.id)).limit(REWRAP_BATCH)
                                    .with_for_update()).all()
                for row in rows:
                    try:
                        changed = self._rewrap(row, active)
                    except crypto.DecryptionError:
                        failed.append(convert.name(row.id))
                        log.error("a stored secret value does not decrypt; left as it is",
                                  extra={"secret": convert.name(row.id), "tenant": row.tenant})
                        continue
                    if changed:
                        done += 1
                        session.add(row)
            if len(rows) < REWRAP_BATCH:
                break
            after = rows[-1].id
        log.info("master key rotated", extra={"master_key_id": active, "rewrapped": done,
                                              "undecryptable": failed})
        return active, done, failed

    def _rewrap(self, row: SecretRow, active: str) -> bool:
        """Re-wrap both sealed values of `row` (all or nothing); whether anything changed."""
        rewrapped = {}
        for column in ("sealed_value", "sealed_previous"):
            sealed = getattr(row, column)
            if sealed and crypto.sealed_by(sealed) != active:
                rewrapped[column] = crypto.rewrap(self.keyring, sealed, context(row))
        for column, sealed in rewrapped.items():
            setattr(row, column, sealed)
        return bool(rewrapped)


# --- helpers ---------------------------------------------------------------------------------

def _check(secret: pb.Secret, prefix: str, *, value_required: bool) -> None:
    found: list[tuple[str, str]] = []
    if not secret.display_name.strip():
        found.append((f"{prefix}.display_name", "must not be empty"))
    elif len(secret.display_name) > 100:
        found.append((f"{prefix}.display_name", "at most 100 characters"))
    if len(secret.description) > 300:
        found.append((f"{prefix}.description", "at most 300 characters"))
    if secret.type not in pb.Secret.Type.values() or secret.type == pb.Secret.TYPE_UNSPECIFIED:
        found.append((f"{prefix}.type", "must be one of API_KEY, BASIC_AUTH, BEARER_TOKEN, "
                                        "HMAC_KEY, JSON"))
    for index, owner in enumerate(secret.owners):
        if not (names.is_name(owner, "users") or names.is_name(owner, "service-accounts")):
            found.append((f"{prefix}.owners[{index}]",
                          "must look like users/{user} or service-accounts/{service_account}"))
    grace = secret.rotation_grace_period
    if grace.seconds < 0 or grace.nanos < 0 or grace.ToTimedelta() > MAX_GRACE:
        found.append((f"{prefix}.rotation_grace_period", "must be between 0s and 30 days"))
    if value_required:
        if not secret.HasField("value"):
            found.append((f"{prefix}.value", "is required"))
        else:
            value = json_format.MessageToDict(secret.value)
            if len(values.encode(value)) > values.MAX_VALUE_BYTES:
                found.append((f"{prefix}.value", "at most 64 KiB as JSON"))
            elif not found or all(f != f"{prefix}.type" for f, _ in found):
                found += [(f"{prefix}.value", p) for p in values.problems(secret.type, value)]
    if found:
        raise InvalidArgument(found)


def _fill(row: SecretRow, secret: pb.Secret) -> None:
    row.display_name = secret.display_name.strip()
    row.description = secret.description
    row.type = secret.type
    row.owners = list(dict.fromkeys(secret.owners))
    row.grace_seconds = (int(secret.rotation_grace_period.ToTimedelta().total_seconds())
                         if secret.HasField("rotation_grace_period")
                         else int(DEFAULT_GRACE.total_seconds()))


def _forget_previous(row: SecretRow) -> None:
    row.sealed_previous, row.previous_fingerprint = "", ""
    row.previous_expire_time = None


def _previous_lasts(row: SecretRow, now: datetime | None = None) -> bool:
    expire = row.previous_expire_time
    if expire is None:
        return False
    return aware(expire) > (now or utcnow())


def _visible(session: Session, caller: Principal, key: str) -> SecretRow:
    row = session.get(SecretRow, key)
    if row is None or not caller.sees_tenant(row.tenant):
        raise NotFound("secret", convert.name(key))
    return row


def _changeable(session: Session, caller: Principal, key: str, etag: str) -> SecretRow:
    # FOR UPDATE (PostgreSQL): a concurrent writer waits, then sees the new etag.
    row = session.exec(select(SecretRow).where(SecretRow.id == key).with_for_update()).first()
    if row is None or not caller.sees_tenant(row.tenant):
        raise NotFound("secret", convert.name(key))
    if etag and etag != row.etag:
        raise Aborted("the secret was changed meanwhile; read it again", reason="ETAG_MISMATCH")
    return row


def _paths(requested: pb.Secret, mask: field_mask_pb2.FieldMask) -> list[str]:
    """The mask's paths, or — for an empty mask — the updatable fields set in `requested`."""
    if not mask.paths:
        return [d.name for d, _ in requested.ListFields() if d.name in UPDATABLE]
    if not mask.IsValidForDescriptor(pb.Secret.DESCRIPTOR):
        raise InvalidArgument.field("update_mask", "names a field Secret does not have")
    return [p for p in mask.paths if p.split(".", 1)[0] in UPDATABLE]
