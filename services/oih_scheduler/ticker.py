"""The scheduler's loop: fire what is due, then sleep until the next due tick (at most
`max_sleep`, so changes made by other replicas and the API are seen soon).

Every replica runs one; `Firing` makes them share the work without firing a tick twice. A
database or orchestrator failure is logged and retried on the next round with back-off, never
fatal: the tick stays due.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from oih_runtime.background import Background
from oih_runtime.clock import utcnow

from .firing import Firing

log = logging.getLogger(__name__)

PURGE_EVERY = 600.0


class Ticker(Background):
    def __init__(self, firing: Firing, max_sleep: float = 1.0,
                 tick_retention: timedelta = timedelta(hours=24)) -> None:
        super().__init__("oih-scheduler-ticker", self._run)
        self.firing = firing
        self.max_sleep = max_sleep
        self.tick_retention = tick_retention
        self._failures = 0
        self._purged_at = 0.0

    def _run(self) -> None:
        while not self.stopping.wait(self.round()):
            pass

    def round(self) -> float:
        """One round; returns how long to sleep before the next."""
        try:
            self.firing.fire_due()
            self._purge()
            next_due = self.firing.next_due()
        except Exception:
            self._failures += 1
            delay: float = min(0.5 * 2.0 ** self._failures, 30.0)
            log.warning("scheduler round failed; retrying in %.1f s", delay, exc_info=True)
            return delay
        self._failures = 0
        if next_due is None:
            return self.max_sleep
        return max(0.0, min((next_due - utcnow()).total_seconds(), self.max_sleep))

    def _purge(self) -> None:
        now = time.monotonic()
        if now - self._purged_at >= PURGE_EVERY:
            self._purged_at = now
            self.firing.purge_ticks(self.tick_retention)
