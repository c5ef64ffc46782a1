"""Flow data throughput, as a ratio to raw RabbitMQ measured in this run.

    python bench/dataplane.py [--messages 5000] [--url amqp://guest:guest@127.0.0.1:5672/%2F]

Baseline: raw pika, one hop: publish persistent messages to a durable queue and consume them
with manual acks (prefetch 200) — what RabbitMQ itself gives one consumer on this machine.
Platform: a two-step flow of real worker processes (transform → sink): each message is taken
from the first step's queue, transformed with JSONata, published to the sink step's queue with a
publisher confirm, acked only after that confirm, and written to the sink's file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pika

from bench.common import report
from oih_builtins.sink import sink_path
from oih_dataplane import envelope, topology
from oih_dataplane.spec import EdgeSpec, StepSpec
from oih_sdk import Message

ROOT = Path(__file__).resolve().parent.parent


def publish(channel: pika.adapters.blocking_connection.BlockingChannel, exchange: str,
            key: str, bodies: list[tuple[bytes, pika.BasicProperties]]) -> None:
    for body, properties in bodies:
        channel.basic_publish(exchange, key, body, properties)


def raw_hop(url: str, count: int) -> float:
    """Messages per second through one durable queue, persistent, acked one by one."""
    queue = f"bench.raw.{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    body = b'{"data":{"n":1}}'
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    received = threading.Event()

    def consume() -> None:
        consumer = pika.BlockingConnection(pika.URLParameters(url))
        consuming = consumer.channel()
        consuming.basic_qos(prefetch_count=200)
        for seen, (method, _properties, _body) in enumerate(consuming.consume(queue), start=1):
            consuming.basic_ack(method.delivery_tag)
            if seen == count:
                break
        consuming.cancel()
        consumer.close()
        received.set()

    started = time.monotonic()
    thread = threading.Thread(target=consume)
    thread.start()
    publish(channel, "", queue, [(body, properties)] * count)
    received.wait()
    elapsed = time.monotonic() - started
    thread.join()
    channel.queue_delete(queue)
    connection.close()
    return count / elapsed


def platform_flow(url: str, count: int, data_dir: Path) -> float:
    """Messages per second through transform → sink, run by real worker processes."""
    flow_id = f"bench{uuid.uuid4().hex[:8]}"
    specs = [
        StepSpec(flow_id=flow_id, step_id="double", entry_point="oih_builtins.transform:component",
                 function="transform", amqp_url=url, config={"expression": "{'n': n * 2}"},
                 edges=[EdgeSpec(target="sink")]),
        StepSpec(flow_id=flow_id, step_id="sink", entry_point="oih_builtins.sink:component",
                 function="sink", amqp_url=url),
    ]
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    topology.declare_flow(channel, flow_id, {s.step_id: s.retry.retry_levels for s in specs})
    env = {**os.environ, "OIH_DATA_DIR": str(data_dir), "OIH_LOG_LEVEL": "WARNING"}
    workers = [subprocess.Popen([sys.executable, "-m", "oih_worker"], cwd=ROOT,
                                env={**env, "OIH_WORKER_SPEC": spec.to_json()},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for spec in specs]
    try:
        while any(channel.queue_declare(topology.step_queue(flow_id, s.step_id),
                                        passive=True).method.consumer_count == 0 for s in specs):
            time.sleep(0.05)
        messages = [Message(data={"n": n}, id=str(uuid.uuid4()), flow_id=flow_id,
                            step_id="double", execution_id=f"e{n}") for n in range(count)]
        encoded = [(envelope.encode(m), envelope.properties_of(m)) for m in messages]
        sink = sink_path(flow_id, "sink", data_dir)
        started = time.monotonic()
        publish(channel, topology.exchange_name(flow_id), topology.input_key("double"), encoded)
        while not sink.exists() or sum(1 for _ in sink.open()) < count:
            time.sleep(0.02)
        return count / (time.monotonic() - started)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)
        topology.delete_flow(channel, flow_id, [s.step_id for s in specs])
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--url", default=os.environ.get(
        "OIH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = ("raw RabbitMQ, one hop", raw_hop(args.url, args.messages))
        flow = platform_flow(args.url, args.messages, Path(tmp))
    report(f"flow data, {args.messages} persistent messages", baseline,
           [("platform: transform -> sink (2 workers, 2 hops)", flow)], "msg/s")


if __name__ == "__main__":
    main()
