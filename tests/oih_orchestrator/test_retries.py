"""Transient failures do not end a stop: the management API is retried with back-off, and a
background task that failed runs again (unless a newer request of its flow came)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from oih_orchestrator.management import Management, ManagementError
from oih_orchestrator.tasks import FlowTasks


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 500 to the first `failures` requests (as RabbitMQ 3.10 does to a user list
    built while a user is deleted), then 204."""

    failures = 0
    seen = 0

    def do_DELETE(self) -> None:  # http.server calls it by this name
        type(self).seen += 1
        self.send_response(500 if type(self).seen <= type(self).failures else 204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def flaky_api() -> Iterator[tuple[str, type[_Flaky]]]:
    handler = type("Flaky", (_Flaky,), {"failures": 0, "seen": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://guest:guest@127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_management_call_is_retried_after_a_server_error(
        flaky_api: tuple[str, type[_Flaky]]) -> None:
    url, handler = flaky_api
    handler.failures = 2
    Management(url, first_delay=0.01).delete_user("oih-flow-f.s")
    assert handler.seen == 3


def test_management_call_gives_up_after_its_attempts(flaky_api: tuple[str, type[_Flaky]]
                                                     ) -> None:
    url, handler = flaky_api
    handler.failures = 100
    with pytest.raises(ManagementError, match="HTTP 500"):
        Management(url, attempts=3, first_delay=0.01).delete_user("oih-flow-f.s")
    assert handler.seen == 3


def test_management_call_to_a_closed_port_is_retried_then_fails() -> None:
    management = Management("http://127.0.0.1:9", attempts=2, first_delay=0.01)
    with pytest.raises(ManagementError):
        management.delete_user("oih-flow-f.s")


def test_a_failed_task_runs_again_until_it_succeeds() -> None:
    tasks = FlowTasks(2, first_delay=0.01)
    runs: list[int] = []

    def fails_twice(_cancel: threading.Event) -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise ManagementError("HTTP 500")

    tasks.submit("f", fails_twice)
    assert tasks.wait_idle(10)
    assert runs == [0, 1, 2]
    tasks.close()


def test_a_failed_task_gives_way_to_a_newer_request() -> None:
    tasks = FlowTasks(2, first_delay=5.0)
    failed, newer = threading.Event(), threading.Event()
    runs: list[str] = []

    def fails(_cancel: threading.Event) -> None:
        runs.append("old")
        failed.set()
        raise ManagementError("HTTP 500")

    tasks.submit("f", fails)
    assert failed.wait(10)
    tasks.submit("f", lambda _cancel: (runs.append("new"), newer.set()))
    assert newer.wait(3)  # not after the 5 s back-off: the newer request cancelled the retry
    assert tasks.wait_idle(10)
    assert runs == ["old", "new"]
    tasks.close()
