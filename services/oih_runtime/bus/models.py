"""The bus's tables, which live in each service's own database.

`OutboxEvent` rows are written in the caller's transaction and relayed to RabbitMQ afterwards;
`ProcessedEvent` rows make handlers idempotent (written in the handler's transaction).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, LargeBinary
from sqlmodel import Field, SQLModel

from oih_runtime.clock import utcnow


class OutboxEvent(SQLModel, table=True):
    """An event owed to the broker. `seq` orders publishing; `sent_at` marks it relayed."""

    __tablename__ = "oih_outbox_event"

    seq: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=64)
    event_type: str = Field(max_length=200)
    source: str = Field(default="", max_length=200)
    tenant: str = Field(default="", max_length=200)
    subject: str = Field(default="", max_length=500)
    request_id: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    # The serialized oih.events.v1.Event, published as is.
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # A relay owns the row until this time (a lease), so a crashed relay's rows come back.
    claimed_until: datetime | None = Field(default=None)
    claimed_by: str | None = Field(default=None, max_length=64)
    sent_at: datetime | None = Field(default=None, index=True)
    publish_attempts: int = Field(default=0)


class ProcessedEvent(SQLModel, table=True):
    """An event a consumer has handled (committed together with the handler's work)."""

    __tablename__ = "oih_processed_event"

    consumer: str = Field(primary_key=True, max_length=200)
    event_id: str = Field(primary_key=True, max_length=64)
    event_type: str = Field(default="", max_length=200)
    processed_at: datetime = Field(default_factory=utcnow, index=True)


#: The bus's tables, which every service that uses the bus creates in its own database.
TABLES = (OutboxEvent, ProcessedEvent)
