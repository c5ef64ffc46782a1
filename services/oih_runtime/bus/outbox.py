"""The transactional outbox: an event is stored in the same transaction as the state change.

`Outbox(source).add(session, ...)` only adds a row to the caller's session; if the caller's
transaction rolls back, the event never existed. After a commit, local relays are woken at once
(`after_commit` hook); relays in other processes find the row when they poll.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import event as sa_event
from sqlmodel import Session

from oih.events.v1 import event_pb2
from oih_runtime.clock import utcnow

from .models import OutboxEvent

_listeners: set[Callable[[], None]] = set()
_listeners_lock = threading.Lock()
_PENDING_KEY = "oih_outbox_pending"
_HOOKED_KEY = "oih_outbox_hooked"


def subscribe(callback: Callable[[], None]) -> None:
    """Call `callback` (from the committing thread) after a transaction that added events."""
    with _listeners_lock:
        _listeners.add(callback)


def unsubscribe(callback: Callable[[], None]) -> None:
    with _listeners_lock:
        _listeners.discard(callback)


def notify() -> None:
    """Wake local relays (also usable by code that writes outbox rows without `add`)."""
    with _listeners_lock:
        callbacks = list(_listeners)
    for callback in callbacks:
        callback()


def _after_commit(session: Session) -> None:
    if session.info.pop(_PENDING_KEY, None):
        notify()


def _after_rollback(session: Session) -> None:
    # The rows are gone with the transaction: nothing to relay.
    session.info.pop(_PENDING_KEY, None)


class Outbox:
    """Adds events emitted by one service (`source`, for example "oih-flows")."""

    def __init__(self, source: str) -> None:
        self.source = source

    def add(
        self,
        session: Session,
        event_type: str,
        payload: Message,
        *,
        tenant: str = "",
        subject: str = "",
        request_id: str = "",
    ) -> event_pb2.Event:
        """Add the event to `session`'s transaction and return the envelope (with its id)."""
        return add(session, event_type, payload, source=self.source, tenant=tenant,
                   subject=subject, request_id=request_id)


def build_event(
    event_type: str, payload: Message, *, source: str, tenant: str = "", subject: str = "",
    request_id: str = "", event_id: str | None = None,
) -> event_pb2.Event:
    """The envelope for `payload` (the time is now, close to the commit of the change)."""
    envelope = event_pb2.Event(
        id=event_id or str(uuid.uuid4()), type=event_type, source=source,
        tenant=tenant, subject=subject, request_id=request_id,
    )
    now = Timestamp()
    now.GetCurrentTime()
    envelope.time.CopyFrom(now)
    envelope.data.Pack(payload)
    return envelope


def add(
    session: Session, event_type: str, payload: Message, *, source: str = "", tenant: str = "",
    subject: str = "", request_id: str = "",
) -> event_pb2.Event:
    """Module-level form of `Outbox.add`."""
    if not event_type:
        raise ValueError("event_type is required (it is also the routing key)")
    envelope = build_event(event_type, payload, source=source, tenant=tenant, subject=subject,
                           request_id=request_id)
    session.add(OutboxEvent(
        event_id=envelope.id, event_type=event_type, source=source, tenant=tenant,
        subject=subject, request_id=request_id, created_at=utcnow(),
        body=envelope.SerializeToString(),
    ))
    session.info[_PENDING_KEY] = True
    if not session.info.get(_HOOKED_KEY):
        # Instance-level listeners, registered once per session: the relays are woken only
        # after a commit that really added events.
        session.info[_HOOKED_KEY] = True
        sa_event.listen(session, "after_commit", _after_commit)
        sa_event.listen(session, "after_rollback", _after_rollback)
    return envelope
