"""Poison messages of every kind are retried as their kind deserves, then parked as dead
letters with the reason, while the good messages around them keep flowing through the same
worker (never a worker crash, never a lost message): a failing component (retried, then
dead-lettered), a non-retryable error (dead-lettered at once), a function emitting what it may
not, an edge mapper that fails, bodies that are not messages at all, and poison on the event
bus (parked in the consuming service's dead-letter queue)."""

from __future__ import annotations

from collections import Counter

import httpx
import pika
import pytest

from oih.events.v1 import event_pb2, orchestrator_pb2
from oih_cli.broker import PrivateBroker
from oih_cli.platform import Platform
from oih_runtime.bus import ServiceQueues
from oih_runtime.bus.topology import DEFAULT_EXCHANGE
from tests.e2e.conftest import auth, unique, wait_state
from tests.faults.support import (
    execute,
    stop_flow,
    wait_arrived,
    wait_for,
    worker_pids,
)

pytestmark = pytest.mark.faults

GOOD = range(60)
#: data → (error type, attempts made) of its dead letter.
POISON = {
    "error": ("RuntimeError", 3),
    "fatal": ("Fatal", 1),
    "not-a-dict": ("TypeError", 3),
    "bad-mapper-input": ("EdgeError", 1),
}
#: Raw deliveries to the step's queue that are no message at all: (body, headers).
MALFORMED = [
    (b"\xff\xfe not even text", {}),
    (b"[1, 2, 3]", {}),
    (b'{"data": "a string, not an object"}', {}),
    (b'{"data": {"n": 1}}', {"oih-attempt": "first"}),
]


def poison_flow(rest: httpx.Client, token: str, components: dict[str, str]) -> str:
    """trigger → picky (3 quick attempts) → sink, whose edge mapper needs a number `v`."""
    flow = rest.post("/v1/flows", headers=auth(token), json={
        "display_name": unique("poison"),
        "graph": {
            "nodes": [
                {"id": "start", "component": components["trigger"], "function": "manual"},
                {"id": "middle", "component": components["picky"], "function": "picky",
                 "settings": {"retry_policy": {"max_attempts": 3, "initial_delay": "0.2s",
                                               "jitter": 0}}},
                {"id": "sink", "component": components["sink"], "function": "sink"}],
            "edges": [{"source": "start", "target": "middle"},
                      {"source": "middle", "target": "sink",
                       "mapper": "{'n': data.n, 'v': $number(data.v)}"}],
        }})
    assert flow.status_code == 200, flow.text
    name = str(flow.json()["name"])
    rest.post(f"/v1/{name}:start", headers=auth(token), json={})
    wait_state(rest, token, name, "STATE_ACTIVE", timeout=60)
    return name


def test_poison_messages_of_every_kind_are_dead_lettered_while_the_rest_flows(
        rest: httpx.Client, platform: Platform, broker: PrivateBroker, token: str,
        components: dict[str, str]) -> None:
    flow = poison_flow(rest, token, components)
    flow_id = flow.removeprefix("flows/")
    workers = worker_pids(platform, flow)
    dead_before = events_dead_letters(broker)
    kinds = list(POISON)
    for n in GOOD:
        assert execute(rest, token, flow, {"n": n, "v": "1"})
        if n % 10 == 0:  # poison between the good ones
            kind = kinds[(n // 10) % len(kinds)]
            data = {"n": 1000 + n, "kind": kind, "v": "1"}
            if kind == "bad-mapper-input":
                data.update(kind="fine", v="not a number")
            assert execute(rest, token, flow, data)
    with pika.BlockingConnection(pika.URLParameters(broker.url)) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        for body, headers in MALFORMED:
            channel.basic_publish(f"oih.flow.{flow_id}", "step.middle.input", body,
                                  pika.BasicProperties(headers=headers, delivery_mode=2),
                                  mandatory=True)
        # Poison on the event bus: no event at all, and an event with the wrong payload.
        wrong = event_pb2.Event(id=unique("poison"), type="oih.flow.execute")
        wrong.data.Pack(orchestrator_pb2.FlowStateChanged(flow=flow))
        for body in (b"garbage", wrong.SerializeToString()):
            channel.basic_publish(DEFAULT_EXCHANGE, "oih.flow.execute", body,
                                  pika.BasicProperties(delivery_mode=2), mandatory=True)

    wait_arrived(platform, flow, set(GOOD), 120)
    expected = Counter({"MalformedMessage": len(MALFORMED)})
    for n in GOOD:
        if n % 10 == 0:
            expected[POISON[kinds[(n // 10) % len(kinds)]][0]] += 1

    def dead_letters() -> list[dict[str, object]]:
        return list(rest.get(f"/v1/{flow}/deadLetters", headers=auth(token),
                             params={"page_size": 100}).json().get("dead_letters", []))

    wait_for(lambda: len(dead_letters()) >= sum(expected.values()), 60, "every dead letter")
    found = dead_letters()
    assert Counter(d["error"]["error_type"] for d in found) == expected  # type: ignore[index]
    for letter in found:
        error = letter["error"]
        assert error["message"]  # type: ignore[index]
        kind = next((k for k, (t, _) in POISON.items() if t == error["error_type"]), None)  # type: ignore[index]
        if kind is not None:
            assert int(error.get("attempt", 1)) == POISON[kind][1], letter  # type: ignore[union-attr]
    wait_for(lambda: events_dead_letters(broker) == dead_before + 2, 30,
             "the poison events in the orchestrator's dead-letter queue")
    # Nothing crashed: the same worker processes, the flow still ACTIVE, and it still runs.
    assert worker_pids(platform, flow) == workers
    assert execute(rest, token, flow, {"n": 5000, "v": "2"})
    wait_arrived(platform, flow, {5000}, 60)
    assert rest.get(f"/v1/{flow}", headers=auth(token)).json()["state"] == "STATE_ACTIVE"
    stop_flow(rest, token, flow)


def events_dead_letters(broker: PrivateBroker) -> int:
    """Events parked by the orchestrator's event consumer."""
    with pika.BlockingConnection(pika.URLParameters(broker.url)) as connection:
        queue = ServiceQueues("orchestrator").dead
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
