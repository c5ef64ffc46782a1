"""Looking up a flow for a webhook request: its state, tenant and webhook settings, from the
Flow Repository (GetFlow with this service's token), reused for a couple of seconds so a burst
of requests costs one call. A cached ACTIVE flow that was stopped meanwhile is still refused:
the orchestrator's StartExecution answers FAILED_PRECONDITION."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc

from oih.flows.v1 import flows_pb2, flows_pb2_grpc
from oih_runtime.errors import Unavailable


class FlowDirectory:
    def __init__(self, channel: grpc.Channel, ttl: float = 2.0, *,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = 10_000) -> None:
        self._stub = flows_pb2_grpc.FlowServiceStub(channel)
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, flows_pb2.Flow | None]] = {}

    def get(self, flow_id: str) -> flows_pb2.Flow | None:
        """The flow, or None when it does not exist."""
        now = self._clock()
        with self._lock:
            hit = self._cache.get(flow_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        try:
            flow: flows_pb2.Flow | None = self._stub.GetFlow(
                flows_pb2.GetFlowRequest(name=f"flows/{flow_id}"), timeout=10)
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise Unavailable(f"the Flow Repository did not answer: {error.code().name}",
                                  reason="FLOWS_UNAVAILABLE") from None
            flow = None
        with self._lock:
            if len(self._cache) >= self._max_entries:
                self._cache.clear()  # unknown ids must not grow it without bound
            self._cache[flow_id] = (now, flow)
        return flow
