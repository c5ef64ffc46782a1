"""Growth curves (size → time or memory): costs that must stay flat as history and work grow.

    python -m bench.scale [--quick] [--curves relay,lists,fanout,stops]

Each curve's first size is its baseline, measured in the same run; the ratios say how the cost
grows (issue 14). Flat (ratios near 1) is expected for:

- relay: events relayed per second against the sent events the outbox still holds (ids kept
  for de-duplication): the relay reads only unsent rows.
- lists: milliseconds per page of ListExecutions (first page and a page in the middle) against
  the executions of one flow: keyset paging over an index, never a sort or an offset walk.
- fanout: the worker's peak resident memory while a split fans one message out to N messages:
  outputs are streamed with a bounded window of unconfirmed publishes.
- stops: seconds per flow when N flows are stopped at once (the real platform): brokers users
  are deleted by name, so a burst costs N times one stop, and every flow ends INACTIVE.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pika
from google.protobuf import struct_pb2
from sqlalchemy import insert

from bench.common import curve, free_port
from oih.orchestrator.v1 import orchestrator_pb2
from oih_dataplane import envelope, topology
from oih_dataplane.spec import EdgeSpec, StepSpec
from oih_orchestrator.executions import models as execution_models
from oih_orchestrator.executions.models import ExecutionRow
from oih_orchestrator.executions.views import list_executions
from oih_runtime.bus import Outbox, OutboxEvent, Relay
from oih_runtime.bus import models as bus_models
from oih_runtime.bus.publisher import ConfirmPublisher
from oih_runtime.clock import utcnow
from oih_runtime.db import make_engine, transaction
from oih_runtime.principal import Principal
from oih_sdk import Message

ROOT = Path(__file__).resolve().parent.parent
URL = os.environ.get("OIH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.01)


# --- relay: events/s against outbox history -------------------------------------------------

def relay_rate(tmp: Path, history: int, events: int) -> float:
    """Events per second the relay claims, publishes (with confirms) and marks sent, when the
    outbox also holds `history` sent events. Only the relay's batches are timed: writing the
    events is the services' cost, not the relay's."""
    engine = make_engine(f"sqlite:///{tmp / f'outbox-{history}.db'}", tables=bus_models.TABLES)
    sent = utcnow()
    with engine.begin() as connection:  # what a busy service's outbox holds: relayed events
        for start in range(0, history, 10_000):
            connection.execute(insert(OutboxEvent), [
                {"event_id": uuid.uuid4().hex, "event_type": "oih.bench.sent", "body": b"",
                 "sent_at": sent, "claimed_by": "bench", "created_at": sent}
                for _ in range(start, min(history, start + 10_000))])
    outbox = Outbox("oih-bench")
    payload = struct_pb2.Value(string_value="x" * 1024)
    for start in range(0, events, 100):  # many small transactions, as services write
        with transaction(engine) as session:
            for _ in range(start, min(events, start + 100)):
                outbox.add(session, "oih.bench.event", payload)
    with engine.connect() as connection:  # start from a settled file, not a pending checkpoint
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    exchange = f"bench.relay.{uuid.uuid4().hex[:8]}"
    relay = Relay(engine, url=URL, exchange=exchange)
    publisher = ConfirmPublisher(URL, exchange)
    publisher.connect()
    try:
        started, relayed = time.monotonic(), 0
        while batch := relay.relay_batch(publisher):
            relayed += batch
        elapsed = time.monotonic() - started
    finally:
        publisher.close()
        _delete_exchange(exchange)
        engine.dispose()
    assert relayed == events, relayed
    return events / elapsed


def _delete_exchange(name: str) -> None:
    with pika.BlockingConnection(pika.URLParameters(URL)) as connection:
        connection.channel().exchange_delete(name)


# --- lists: ms per page against rows ----------------------------------------------------------

TENANT = "tenants/bench"
MEMBER = Principal(subject="users/bench", tenant=TENANT, permissions=frozenset({"flows.read"}))


def list_latency(tmp: Path, rows: int) -> tuple[float, float]:
    """(ms for the first page, ms for a page in the middle), 50 executions a page."""
    engine = make_engine(f"sqlite:///{tmp / f'executions-{rows}.db'}",
                         tables=execution_models.TABLES)
    now = utcnow()
    with engine.begin() as connection:
        for start in range(0, rows, 10_000):
            connection.execute(insert(ExecutionRow), [
                {"flow_id": "f1", "execution_id": f"e{i:08d}", "tenant": TENANT,
                 "create_time": now - timedelta(seconds=i), "update_time": now}
                for i in range(start, min(rows, start + 10_000))])

    def page(token: str, size: int = 50) -> str:
        reply = list_executions(engine, MEMBER, orchestrator_pb2.ListExecutionsRequest(
            parent="flows/f1", page_size=size, page_token=token))
        return str(reply.next_page_token)

    first = _median_ms(lambda: page(""))
    middle, walked, step = "", 0, max(1, min(1000, rows // 2))
    while walked + step <= rows // 2:  # a token from the middle of the list
        middle, walked = page(middle, step), walked + step
    deep = _median_ms(lambda: page(middle))
    engine.dispose()
    return first, deep


def _median_ms(call: Callable[[], object], repeat: int = 31) -> float:
    """The median of `repeat` timed calls (a shared machine's noise moves the mean)."""
    call()
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


# --- fanout: peak worker memory against outputs ------------------------------------------------

def fanout_peak_mib(tmp: Path, outputs: int) -> tuple[float, float]:
    """(peak RSS of the split worker in MiB, seconds until every output was confirmed)."""
    flow_id = f"bench{uuid.uuid4().hex[:8]}"
    split = StepSpec(flow_id=flow_id, step_id="split", entry_point="oih_builtins.split:component",
                     function="split", amqp_url=URL, config={"path": "items"},
                     edges=[EdgeSpec(target="out")])
    out = StepSpec(flow_id=flow_id, step_id="out", entry_point="oih_builtins.sink:component",
                   function="sink", amqp_url=URL)  # declared, not run: outputs wait there
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    topology.declare_flow(channel, flow_id, {s.step_id: s.retry.retry_levels
                                             for s in (split, out)})
    env = {**os.environ, "OIH_DATA_DIR": str(tmp), "OIH_LOG_LEVEL": "WARNING",
           "OIH_WORKER_SPEC": split.to_json()}
    worker = subprocess.Popen([sys.executable, "-m", "oih_worker"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    queue = topology.step_queue(flow_id, "out")

    def depth(name: str) -> int:
        return int(channel.queue_declare(name, passive=True).method.message_count)

    try:
        wait_until(lambda: channel.queue_declare(topology.step_queue(flow_id, "split"),
                                                 passive=True).method.consumer_count > 0,
                   60, "the worker consuming")
        message = Message(data={"items": [{"n": n, "name": f"item {n}"} for n in range(outputs)]},
                          id=str(uuid.uuid4()), flow_id=flow_id, step_id="split",
                          execution_id="e1")
        started = time.monotonic()
        channel.basic_publish(topology.exchange_name(flow_id), topology.input_key("split"),
                              envelope.encode(message), envelope.properties_of(message))
        wait_until(lambda: depth(queue) >= outputs, 600, "every output")
        elapsed = time.monotonic() - started
        peak = _peak_rss_mib(worker.pid)
    finally:
        worker.terminate()
        worker.wait(30)
        topology.delete_flow(channel, flow_id, ["split", "out"])
        connection.close()
    return peak, elapsed


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


# --- stops: seconds per flow against flows stopped at once ------------------------------------

def stop_bursts(tmp: Path, sizes: list[int]) -> list[tuple[int, float]]:
    from oih_cli.platform import Platform
    from oih_runtime.settings import DEFAULT_PORTS

    admin, password = "admin@bench.test", "bench-admin-password"
    platform = Platform(
        data_dir=tmp / "platform", gateway_port=free_port(), admin_port=free_port(),
        ports={name: free_port() for name in DEFAULT_PORTS},
        services=["iam", "components", "flows", "orchestrator"],
        extra_env={"OIH_IAM_ADMIN_USERNAME": admin, "OIH_IAM_ADMIN_PASSWORD": password,
                   "OIH_LOG_LEVEL": "WARNING",
                   "OIH_BUS_NAMESPACE": f"bench{uuid.uuid4().hex[:8]}"})
    points = []
    with platform, httpx.Client(base_url=platform.gateway_url, timeout=60) as rest:
        token = _tenant_admin(rest, admin, password)
        builtins = _builtins(rest, token)
        for size in sizes:
            flows = [_create_flow(rest, token, builtins) for _ in range(size)]
            _all(platform, token, flows, "start", "STATE_ACTIVE", 300)
            started = time.monotonic()
            _all(platform, token, flows, "stop", "STATE_INACTIVE", 300)
            points.append((size, (time.monotonic() - started) / size))
    return points


def _tenant_admin(rest: httpx.Client, admin: str, password: str) -> str:
    def login(username: str, secret: str) -> str:
        return str(rest.post("/v1/login", json={"username": username, "password": secret})
                   .json()["access_token"])

    root = {"authorization": f"Bearer {login(admin, password)}"}
    tenant = rest.post("/v1/tenants", headers=root, json={"display_name": "bench"}).json()
    rest.post("/v1/users", headers=root, json={
        "user": {"username": "owner@bench.test", "tenant": tenant["name"],
                 "roles": ["roles/tenant-admin"]}, "password": password}).raise_for_status()
    return login("owner@bench.test", password)


def _builtins(rest: httpx.Client, token: str) -> dict[str, str]:
    headers = {"authorization": f"Bearer {token}"}
    found: dict[str, str] = {}
    wait_until(lambda: {"trigger", "sink"} <= found.keys() or bool(found.update({
        c["display_name"]: c["name"] for c in rest.get(
            "/v1/components", headers=headers,
            params={"filter": "access=PUBLIC", "page_size": 100}).json().get("components", [])})),
        60, "the built-in components")
    return found


def _create_flow(rest: httpx.Client, token: str, builtins: dict[str, str]) -> str:
    created = rest.post("/v1/flows", headers={"authorization": f"Bearer {token}"}, json={
        "display_name": f"burst {uuid.uuid4().hex[:6]}",
        "graph": {"nodes": [
            {"id": "start", "component": builtins["trigger"], "function": "manual"},
            {"id": "sink", "component": builtins["sink"], "function": "sink"}],
            "edges": [{"source": "start", "target": "sink"}]}})
    created.raise_for_status()
    return str(created.json()["name"])


def _all(platform: Any, token: str, flows: list[str], verb: str, state: str,
         timeout: float) -> None:
    headers = {"authorization": f"Bearer {token}"}

    def post(flow: str) -> None:
        with httpx.Client(base_url=platform.gateway_url, timeout=60) as client:
            client.post(f"/v1/{flow}:{verb}", headers=headers, json={}).raise_for_status()

    with ThreadPoolExecutor(len(flows)) as pool:
        list(pool.map(post, flows))
    with httpx.Client(base_url=platform.gateway_url, timeout=60) as client:
        for flow in flows:
            wait_until(lambda flow=flow: client.get(f"/v1/{flow}", headers=headers)
                       .json()["state"] == state, timeout, f"{flow} {state}")


# --- main ------------------------------------------------------------------------------------

FULL = {"relay": [0, 50_000, 200_000], "lists": [1_000, 10_000, 100_000],
        "fanout": [1_000, 10_000, 50_000], "stops": [5, 10, 20]}
QUICK = {"relay": [0, 2_000], "lists": [100, 2_000], "fanout": [100, 2_000], "stops": [2]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--curves", default="relay,lists,fanout,stops")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    chosen = args.curves.split(",")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "relay" in chosen:
            events = 200 if args.quick else 5_000
            curve(f"outbox relay: {events:,} new events relayed, against the sent events the "
                  "outbox holds", "sent events", "events/s",
                  [(history, relay_rate(tmp, history, events)) for history in sizes["relay"]],
                  note="flat: the relay reads only unsent rows")
        if "lists" in chosen:
            measured = [(rows, list_latency(tmp, rows)) for rows in sizes["lists"]]
            curve("ListExecutions, first page of 50, against the executions of the flow",
                  "executions", "ms/page", [(rows, first) for rows, (first, _) in measured],
                  note="flat: a range of the (flow, tenant, create_time, id) index")
            curve("ListExecutions, a page of 50 from the middle of the list", "executions",
                  "ms/page", [(rows, deep) for rows, (_, deep) in measured],
                  note="flat: keyset paging, no offset to walk")
        if "fanout" in chosen:
            measured_fanout = [(n, fanout_peak_mib(tmp, n)) for n in sizes["fanout"]]
            curve("split fan-out: peak worker memory against the outputs of one message",
                  "outputs", "peak MiB", [(n, peak) for n, (peak, _) in measured_fanout],
                  note="near flat: the input itself grows, the outputs are streamed")
            curve("split fan-out: seconds until every output was confirmed", "outputs",
                  "seconds", [(n, seconds) for n, (_, seconds) in measured_fanout],
                  note="linear in the outputs")
        if "stops" in chosen:
            curve("stopping N flows at once: seconds per flow until all are INACTIVE",
                  "flows", "s/flow", stop_bursts(tmp, sizes["stops"]),
                  note="flat: every stop deletes its own broker users by name")


if __name__ == "__main__":
    main()
