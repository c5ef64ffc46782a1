"""The outbox row commits and rolls back with the caller's domain change."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from oih.events.v1 import event_pb2, iam_pb2
from oih_runtime.bus import Outbox, OutboxEvent, outbox
from oih_runtime.db import transaction
from tests.oih_runtime.bus.support import Widget

OUTBOX = Outbox("oih-test")


def test_event_commits_with_the_state_change(engine: Engine) -> None:
    with transaction(engine) as session:
        session.add(Widget(name="w1"))
        added = OUTBOX.add(session, "oih.iam.tenant.deleted",
                           iam_pb2.TenantChanged(tenant="tenants/t1"),
                           tenant="tenants/t1", subject="tenants/t1", request_id="req-1")
    with transaction(engine) as session:
        assert [w.name for w in session.exec(select(Widget))] == ["w1"]
        rows = session.exec(select(OutboxEvent)).all()
    assert len(rows) == 1
    row = rows[0]
    assert (row.event_id, row.event_type, row.source, row.tenant, row.request_id) == (
        added.id, "oih.iam.tenant.deleted", "oih-test", "tenants/t1", "req-1")
    assert row.sent_at is None
    event = event_pb2.Event.FromString(row.body)
    assert event == added
    payload = iam_pb2.TenantChanged()
    assert event.data.Unpack(payload) and payload.tenant == "tenants/t1"
    assert event.time.seconds > 0


def test_event_rolls_back_with_the_state_change(engine: Engine) -> None:
    with pytest.raises(RuntimeError), transaction(engine) as session:
        session.add(Widget(name="w1"))
        OUTBOX.add(session, "oih.iam.tenant.deleted", iam_pb2.TenantChanged())
        session.flush()  # the rows reach the database and must still disappear
        raise RuntimeError("the API call fails")
    with transaction(engine) as session:
        assert session.exec(select(Widget)).all() == []
        assert session.exec(select(OutboxEvent)).all() == []


def test_relays_are_woken_after_commit_only(engine: Engine) -> None:
    calls: list[int] = []

    def listener() -> None:
        calls.append(1)

    outbox.subscribe(listener)
    try:
        with pytest.raises(RuntimeError), transaction(engine) as session:
            OUTBOX.add(session, "oih.test.a", iam_pb2.TenantChanged())
            raise RuntimeError
        assert calls == []
        with transaction(engine) as session:
            session.add(Widget(name="no event"))
        assert calls == []
        with transaction(engine) as session:
            OUTBOX.add(session, "oih.test.a", iam_pb2.TenantChanged())
            OUTBOX.add(session, "oih.test.b", iam_pb2.TenantChanged())
        assert calls == [1]
    finally:
        outbox.unsubscribe(listener)


def test_event_type_is_required(engine: Engine) -> None:
    with transaction(engine) as session, pytest.raises(ValueError):
        OUTBOX.add(session, "", iam_pb2.TenantChanged())
