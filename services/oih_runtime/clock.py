"""Time, written once: the current UTC time, SQLite's zone-less datetimes made aware, and
datetimes as protobuf Timestamps.

Every stored time is UTC. PostgreSQL's timestamptz hands it back aware; SQLite hands it back
without a zone, so anything read from a row goes through `aware` before it is compared or
converted.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """`moment` with its zone; a zone-less one was stored as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(aware(moment))
    return stamp
