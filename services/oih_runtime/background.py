"""Background threads, written once: one start/stop/join behaviour for every loop a service runs.

- `Background`: a daemon thread running a loop until `stop()`; the loop checks `stopping`.
- `Periodic`: an action every `interval` seconds (the reconciler, sweepers, a supervisor).
- `UntilDone`: an action retried with back-off until it succeeds once (registrations).
- `Reconnecting`: a broker session (connect, then serve until the connection drops) started
  again with back-off for as long as the service runs (the bus consumer and relay, the
  revocation feed, the reports consumer).

`start()` on a running task does nothing; `stop()` sets `stopping`, waits up to its timeout
for the loop to notice, logs a loop that did not, and allows a later `start()`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import pika.exceptions

log = logging.getLogger(__name__)

#: What a broker session raises when RabbitMQ is away: logged without a trace.
BROKER_ERRORS: tuple[type[Exception], ...] = (pika.exceptions.AMQPError, OSError)


class Background:
    """A daemon thread running `loop` until `stop()`. The loop watches `stopping`."""

    def __init__(self, name: str, loop: Callable[[], None], *, stop_timeout: float = 30.0
                 ) -> None:
        self.name = name
        self.stop_timeout = stop_timeout
        self.stopping = threading.Event()
        self._loop = loop
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self.stopping.clear()
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end and wait for it (at most `timeout`, default `stop_timeout`)."""
        self.stopping.set()
        if self._thread is not None:
            wait = self.stop_timeout if timeout is None else timeout
            self._thread.join(wait)
            if self._thread.is_alive():
                log.warning("%s did not stop within %.0fs", self.name, wait)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


class Periodic(Background):
    """Runs `action` every `interval` seconds until stopped (first at once unless `at_once` is
    False); an error is logged and the next round tries again (the broker, the database or a
    service may be down for a while)."""

    def __init__(self, action: Callable[[], object], interval: float, name: str, *,
                 at_once: bool = True, stop_timeout: float = 60.0) -> None:
        super().__init__(name, self._run, stop_timeout=stop_timeout)
        self.action = action
        self.interval = interval
        self.at_once = at_once
        self.rounds = 0  # completed rounds, for tests

    def _run(self) -> None:
        if not self.at_once and self.stopping.wait(self.interval):
            return
        while True:
            try:
                self.action()
            except Exception:
                log.exception("%s failed; trying again in %.0fs", self.name, self.interval)
            self.rounds += 1
            if self.stopping.wait(self.interval):
                return


class UntilDone(Background):
    """Runs `action` until it succeeds, with back-off (e.g. the Component Repository starting
    after us); `done` is set once it did."""

    def __init__(self, action: Callable[[], object], name: str, initial: float = 1.0,
                 maximum: float = 60.0) -> None:
        super().__init__(name, self._run, stop_timeout=15.0)
        self.action = action
        self.initial = initial
        self.maximum = maximum
        self.done = threading.Event()

    def _run(self) -> None:
        delay = self.initial
        while not self.stopping.is_set():
            try:
                self.action()
            except Exception as error:
                log.warning("%s failed (%s); trying again in %.0fs", self.name, error, delay)
                if self.stopping.wait(delay):
                    return
                delay = min(delay * 2, self.maximum)
            else:
                self.done.set()
                return


class Reconnecting(Background):
    """Runs `session` again and again until stopped, waiting `initial` seconds after a failed
    one, doubled after each further failure up to `maximum`. A session connects, calls
    `connected()` (which resets the wait), serves until `stopping` or until its connection
    fails, and cleans up after itself. Errors in `expected` (the broker is away) are logged
    as warnings, anything else with its trace; neither ends the loop."""

    def __init__(self, name: str, session: Callable[[], None], *, initial: float = 0.5,
                 maximum: float = 30.0, expected: tuple[type[Exception], ...] = BROKER_ERRORS,
                 stop_timeout: float = 30.0) -> None:
        super().__init__(name, self._run, stop_timeout=stop_timeout)
        self.session = session
        self.initial = initial
        self.maximum = maximum
        self.expected = expected
        self._delay = initial

    def connected(self) -> None:
        """The session's connection is up: the next failure waits `initial` again."""
        self._delay = self.initial

    def _run(self) -> None:
        self._delay = self.initial
        while not self.stopping.is_set():
            try:
                self.session()
            except self.expected as error:
                log.warning("%s: connection lost or refused (%s: %s); reconnecting in %.1fs",
                            self.name, type(error).__name__, error, self._delay)
            except Exception:
                log.exception("%s: unexpected error; reconnecting in %.1fs", self.name,
                              self._delay)
            if self.stopping.wait(self._delay):
                return
            self._delay = min(self._delay * 2, self.maximum)
