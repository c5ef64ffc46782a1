"""Background threads: the periodic reconcile and the registration of the built-ins."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs `action` at once and then every `interval` seconds until stopped; an error is
    logged and the next round tries again (the broker or a service may be down for a while)."""

    def __init__(self, action: Callable[[], None], interval: float, name: str) -> None:
        self.action = action
        self.interval = interval
        self.name = name
        self.rounds = 0  # completed rounds, for tests
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                self.action()
            except Exception:
                log.exception("%s failed; trying again in %.0fs", self.name, self.interval)
            self.rounds += 1
            if self._stopping.wait(self.interval):
                return


class UntilDone:
    """Runs `action` until it succeeds, with back-off (e.g. the Component Repository starting
    after us)."""

    def __init__(self, action: Callable[[], object], name: str, initial: float = 1.0,
                 maximum: float = 60.0) -> None:
        self.action = action
        self.name = name
        self.initial = initial
        self.maximum = maximum
        self.done = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None

    def _run(self) -> None:
        delay = self.initial
        while not self._stopping.is_set():
            try:
                self.action()
            except Exception as error:
                log.warning("%s failed (%s); trying again in %.0fs", self.name, error, delay)
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, self.maximum)
            else:
                self.done.set()
                return
