"""The `http-poll` trigger against a real local HTTP server: only items newer than the
snapshot's position are emitted, the position advances, and the egress guard applies."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from oih_sdk import Message, NonRetryableError, Snapshot, is_retryable, load_function
from oih_sdk.egress import ALLOWED_NETWORKS_ENV, EgressRefused
from oih_worker.process import emitted

POLL = load_function("oih_builtins.http_poll:component", "poll")


class Feed(ThreadingHTTPServer):
    items: list[dict[str, Any]]
    status: int = 200


@pytest.fixture
def feed() -> Iterator[Feed]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"items": running.items}).encode()
            self.send_response(running.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    running = Feed(("127.0.0.1", 0), Handler)
    running.items = []
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()


@pytest.fixture
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOWED_NETWORKS_ENV, "127.0.0.1/32")


def run(config: dict[str, Any], snapshot: dict[str, Any]
        ) -> tuple[list[dict[str, Any]], Snapshot | None]:
    items = list(emitted(POLL(Message(data={}), config, snapshot)))
    snapshots = [item for item in items if isinstance(item, Snapshot)]
    outputs = [item for item in items if isinstance(item, Message | dict)]
    return ([o if isinstance(o, dict) else o.data for o in outputs],
            snapshots[-1] if snapshots else None)


def test_emits_only_newer_items_and_advances(feed: Feed, loopback_allowed: None) -> None:
    config = {"url": f"http://127.0.0.1:{feed.server_port}/feed"}
    feed.items = [{"id": 2, "v": "b"}, {"id": 1, "v": "a"}]
    outputs, snapshot = run(config, {})
    assert outputs == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]  # oldest first
    assert snapshot is not None and snapshot.data == {"position": 2}
    feed.items = [{"id": 1}, {"id": 2}, {"id": 3, "v": "c"}]
    outputs, snapshot = run(config, {"position": 2.0})  # as read back through a Struct
    assert outputs == [{"id": 3, "v": "c"}]
    assert snapshot is not None and snapshot.data == {"position": 3}
    outputs, snapshot = run(config, {"position": 3})
    assert outputs == [] and snapshot is None  # nothing new: the position stays


def test_timestamps_and_a_cap_per_tick(feed: Feed, loopback_allowed: None) -> None:
    config = {"url": f"http://127.0.0.1:{feed.server_port}/", "position_field": "updated",
              "max_items": 2}
    feed.items = [{"updated": f"2026-01-0{d}T00:00:00Z"} for d in (3, 1, 2)]
    outputs, snapshot = run(config, {"position": "2025-12-31T00:00:00Z"})
    assert [o["updated"][:10] for o in outputs] == ["2026-01-01", "2026-01-02"]
    assert snapshot is not None and snapshot.data == {"position": "2026-01-02T00:00:00Z"}


def test_failed_fetch_is_retried_and_keeps_the_position(feed: Feed,
                                                        loopback_allowed: None) -> None:
    feed.status = 503
    with pytest.raises(Exception) as caught:
        run({"url": f"http://127.0.0.1:{feed.server_port}/"}, {"position": 1})
    assert is_retryable(caught.value)


def test_loopback_is_refused_without_the_allow_list(feed: Feed,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOWED_NETWORKS_ENV, raising=False)
    with pytest.raises(EgressRefused):
        run({"url": f"http://127.0.0.1:{feed.server_port}/"}, {})


@pytest.mark.parametrize("items", [[{"id": None}], [{"id": 1}, {"id": "x"}], "nope"])
def test_unusable_answers_are_not_retried(feed: Feed, loopback_allowed: None,
                                          items: Any) -> None:
    feed.items = items
    with pytest.raises(NonRetryableError):
        run({"url": f"http://127.0.0.1:{feed.server_port}/"}, {})
