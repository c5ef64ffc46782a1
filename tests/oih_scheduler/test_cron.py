"""Cron expressions in time zones, across daylight-saving changes (fixed instants, no clock)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from oih_runtime.cron import CronError, parse

BERLIN = "Europe/Berlin"


def local_ticks(expression: str, zone: str, start: datetime, end: datetime) -> list[str]:
    schedule = parse(expression, zone)
    return [f"{t.astimezone(schedule.zone):%Y-%m-%d %H:%M %Z}"
            for t in schedule.ticks(start, end)]


def test_daily_0230_fires_once_on_spring_forward_day() -> None:
    # Berlin skips 02:00-03:00 on 2026-03-29: the 02:30 job fires once, shifted by the gap.
    ticks = local_ticks("30 2 * * *", BERLIN, datetime(2026, 3, 27, 12, tzinfo=UTC),
                        datetime(2026, 3, 30, 12, tzinfo=UTC))
    assert ticks == ["2026-03-28 02:30 CET", "2026-03-29 03:30 CEST", "2026-03-30 02:30 CEST"]


def test_daily_0230_fires_once_on_fall_back_day() -> None:
    # Berlin repeats 02:00-03:00 on 2026-10-25: the 02:30 job fires at the first 02:30 only.
    ticks = local_ticks("30 2 * * *", BERLIN, datetime(2026, 10, 23, 12, tzinfo=UTC),
                        datetime(2026, 10, 26, 12, tzinfo=UTC))
    assert ticks == ["2026-10-24 02:30 CEST", "2026-10-25 02:30 CEST", "2026-10-26 02:30 CET"]


@pytest.mark.parametrize("zone", [BERLIN, "America/New_York"])
@pytest.mark.parametrize(("start", "hours"), [
    (datetime(2026, 10, 24, 12, tzinfo=UTC), 48),  # Berlin falls back (25-hour day)
    (datetime(2026, 3, 28, 12, tzinfo=UTC), 48),   # Berlin springs forward (23-hour day)
    (datetime(2026, 3, 7, 12, tzinfo=UTC), 48),    # New York springs forward
    (datetime(2026, 10, 31, 12, tzinfo=UTC), 48),  # New York falls back
])
def test_frequent_job_runs_in_real_time_across_changes(zone: str, start: datetime,
                                                       hours: int) -> None:
    """An every-20-minutes job fires three times in every real hour, also in a repeated one
    and never in a skipped one: no tick doubled, none lost."""
    ticks = parse("*/20 * * * *", zone).ticks(start, start + timedelta(hours=hours))
    assert len(ticks) == len(set(ticks)) == hours * 3
    assert all(b - a == timedelta(minutes=20) for a, b in itertools.pairwise(ticks))


def test_six_fields_have_seconds_first() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ticks = parse("*/15 * * * * *").ticks(start, start + timedelta(minutes=1))
    assert [t.second for t in ticks] == [15, 30, 45, 0]


def test_time_zone_moves_a_fixed_time() -> None:
    after = datetime(2026, 7, 1, tzinfo=UTC)
    assert parse("0 9 * * *", "Asia/Kolkata").next_after(after) == datetime(
        2026, 7, 1, 3, 30, tzinfo=UTC)


@pytest.mark.parametrize(("expression", "zone"), [
    ("every minute", "UTC"), ("* * * *", "UTC"), ("0 0 0 * * * *", "UTC"), ("61 * * * *", "UTC"),
    ("@hourly", "UTC"), ("* * * * *", "Mars/Olympus"), ("* * * * *", "../etc/passwd"),
])
def test_unusable_expressions_and_zones_are_refused(expression: str, zone: str) -> None:
    with pytest.raises(CronError):
        parse(expression, zone)
