"""FlowTasks: background work (starts, stops, teardowns) off the event consumer's thread.

Tasks of one flow run one after the other, in the order they were submitted, so a flow's start
and the stop that follows it never overlap or swap; tasks of different flows run in parallel on
a small pool, so one flow whose workers never come up (it waits `start_timeout`) delays no
other flow's events. A flow holds a pool thread only while it has tasks queued.

Each submit also trips the flow's *cancel* event: a start still in progress sees it and gives
up (a newer request — a stop, a new start, a failure from elsewhere — is queued behind it and
knows better).

A task that fails (the broker's management API down for longer than its own retries, a
database error) runs again with back-off until it succeeds, a newer request of the flow
arrives, or `max_attempts` is spent: a stop is finished within seconds of the broker
recovering instead of waiting for the sweeper. Every task is written to be run again (each part
idempotent), which is also what the reconciler relies on after a crash. `close()` cancels everything and refuses new tasks: what was asked but not done
is in the deployments table (STARTING, STOPPING), which the reconciler finishes after a restart.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

Task = Callable[[threading.Event], None]


class FlowTasks:
    def __init__(self, threads: int = 8, *, max_attempts: int = 8, first_delay: float = 1.0,
                 max_delay: float = 30.0) -> None:
        self.max_attempts = max_attempts
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="oih-flow-task")
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Task]] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._idle = threading.Condition(self._lock)
        self._closed = False
        self.closing = threading.Event()

    def submit(self, flow_id: str, task: Task) -> bool:
        """Queue `task(cancel)` behind the flow's other tasks; False once closed."""
        with self._lock:
            if self._closed:
                log.info("not queuing a task of flow %s: shutting down", flow_id)
                return False
            self._cancels.setdefault(flow_id, threading.Event()).set()  # newer request wins
            queue = self._queues.setdefault(flow_id, deque())
            queue.append(task)
            if len(queue) == 1:
                self._pool.submit(self._drain, flow_id)
            return True

    def busy(self, flow_id: str) -> bool:
        """Whether the flow has a task queued or running."""
        with self._lock:
            return flow_id in self._queues

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no flow has tasks (tests; shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._queues, timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Refuse new tasks, cancel running starts, wait for what runs."""
        with self._lock:
            self._closed = True
            self.closing.set()
            for event in self._cancels.values():
                event.set()
            for flow_id, queue in self._queues.items():
                while len(queue) > 1:  # not begun: the table says what is left to do
                    queue.pop()
                    log.info("dropped a queued task of flow %s: shutting down", flow_id)
        if not self.wait_idle(timeout):
            log.warning("flow tasks still running after %.0fs", timeout)
        self._pool.shutdown(wait=False)

    def _drain(self, flow_id: str) -> None:
        while True:
            with self._lock:
                task = self._queues[flow_id][0]
                # A fresh event for this task: only requests made from now on cancel it.
                cancel = self._cancels[flow_id] = threading.Event()
                if self._closed:
                    cancel.set()
            self._run(flow_id, task, cancel)
            with self._lock:
                queue = self._queues[flow_id]
                queue.popleft()
                if not queue:
                    del self._queues[flow_id]
                    self._cancels.pop(flow_id, None)
                    self._idle.notify_all()
                    return

    def _run(self, flow_id: str, task: Task, cancel: threading.Event) -> None:
        delay = self.first_delay
        for attempt in range(1, self.max_attempts + 1):
            try:
                task(cancel)
                return
            except Exception:
                if attempt == self.max_attempts:
                    log.exception("a background task of flow %s failed %d times; giving up",
                                  flow_id, attempt)
                    return
                log.exception("a background task of flow %s failed (attempt %d of %d); "
                              "trying again in %.0fs", flow_id, attempt, self.max_attempts, delay)
            if cancel.wait(delay):
                log.info("not repeating a failed task of flow %s: a newer request (or a "
                         "shutdown) decides", flow_id)
                return
            delay = min(delay * 2, self.max_delay)
