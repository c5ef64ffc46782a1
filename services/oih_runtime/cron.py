"""Cron expressions in a time zone: which ones the platform accepts and when they fire next.

Shared by the Flow Repository (which validates a flow's `cron`) and the Scheduler (which fires
it), so both agree on what an expression means.

- Five fields (minute hour day month weekday), or six with seconds first
  (`*/10 * * * * *`, as in Quartz and Spring). No `@hourly` macros.
- Daylight saving, in the schedule's IANA time zone (the rule of Vixie cron):
  - an expression whose hour field is `*` runs in real time: every instant whose local time
    matches fires, so an every-minute job runs on through a repeated hour and the skipped hour
    simply has no instants;
  - an expression with fixed hours runs on the wall clock: a local time that occurs twice (fall
    back) fires once, at its first occurrence, and a local time that does not exist (spring
    forward) fires once, shifted forward by the gap (02:30 becomes 03:30, PEP 495's `fold=0`).
Real-time expressions use croniter's time-zone handling as is; for fixed hours croniter only
enumerates naive wall-clock times and the mapping to instants is ours, because croniter fires a
fixed-hour job twice on the fall-back day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

#: How far ahead a clock change is looked for (no zone changes its offset twice within it).
_HORIZON = timedelta(hours=4)
_STEP = timedelta(minutes=15)


class CronError(ValueError):
    """The expression or time zone cannot be used; the message says why."""


@dataclass(frozen=True)
class Cron:
    expression: str
    zone: ZoneInfo

    @property
    def has_seconds(self) -> bool:
        return len(self.expression.split()) == 6

    @property
    def real_time(self) -> bool:
        """Whether the hour field is `*` (see the module docstring)."""
        return self.expression.split()[2 if self.has_seconds else 1] == "*"

    def _wall_times(self, start: datetime) -> croniter:
        return croniter(self.expression, start, second_at_beginning=self.has_seconds)

    def _instants(self, wall: datetime) -> list[datetime]:
        """The UTC instants a matching naive local time `wall` fires at (0, 1 or 2)."""
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        exists = first.astimezone(self.zone).replace(tzinfo=None) == wall
        if not exists:
            return [] if self.real_time else [first]
        if first != second and self.real_time:
            return [first, second]  # a repeated local time: both occurrences are real instants
        return [first]

    def _shift(self, moment: datetime) -> timedelta:
        """The largest clock change within the horizon after `moment` (0 almost always): how
        far wall times and instants may be out of order near it."""
        offset = moment.astimezone(self.zone).utcoffset() or timedelta()
        steps = int(_HORIZON / _STEP)
        later = ((moment + _STEP * i).astimezone(self.zone).utcoffset() or timedelta()
                 for i in range(1, steps + 1))
        return max((abs(offset - other) for other in later), default=timedelta())

    def next_after(self, moment: datetime) -> datetime:
        """The first firing instant strictly after `moment` (aware), in UTC."""
        moment = moment.astimezone(UTC)
        if self.real_time:
            # croniter on aware times steps through real instants, both of a repeated hour.
            found = self._wall_times(moment.astimezone(self.zone)).get_next(datetime)
            return found.astimezone(UTC)  # type: ignore[no-any-return]
        local = moment.astimezone(self.zone).replace(tzinfo=None)
        shift = self._shift(moment)
        # Start `shift` early: after a fall back, a later instant has an earlier wall time.
        walls = self._wall_times(local - shift - timedelta(seconds=1))
        best: datetime | None = None
        while True:
            wall = walls.get_next(datetime)
            if best is not None and wall - shift > best.astimezone(self.zone).replace(
                    tzinfo=None):
                return best
            for instant in self._instants(wall):
                if instant > moment and (best is None or instant < best):
                    best = instant

    def ticks(self, after: datetime, until: datetime) -> list[datetime]:
        """Every firing instant in (after, until], oldest first."""
        found = []
        tick = self.next_after(after)
        while tick <= until:
            found.append(tick)
            tick = self.next_after(tick)
        return found


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise CronError(f"{name!r} is not an IANA time zone, for example 'Europe/Berlin'") from None


def parse(expression: str, time_zone: str = "UTC") -> Cron:
    fields = expression.split()
    if len(fields) not in (5, 6) or not croniter.is_valid(
            expression, second_at_beginning=len(fields) == 6):
        raise CronError(f"{expression!r} is not a cron expression of five fields (or six with "
                        "seconds first), for example '*/5 * * * *'")
    return Cron(" ".join(fields), zone(time_zone))


def check(expression: str) -> str | None:
    """None when `expression` is usable, else why not."""
    try:
        parse(expression)
    except CronError as error:
        return str(error)
    return None
