"""Shared by the benchmarks: timing a callable from many threads, and printing a table."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def throughput(call: Callable[[], object], *, threads: int, seconds: float) -> float:
    """Calls per second of `call`, run in a loop by `threads` threads for `seconds`."""
    call()  # warm up: connections, caches
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def loop(index: int) -> None:
        while time.monotonic() < stop:
            call()
            counts[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.monotonic() - started)


def report(title: str, baseline: tuple[str, float], rows: list[tuple[str, float]],
           unit: str) -> None:
    name, base = baseline
    print(f"\n{title}")
    print(f"  {'':44} {unit:>12}  ratio to {name}")
    for label, value in [baseline, *rows]:
        print(f"  {label:44} {value:12,.0f}  {value / base:5.2f}x")


def curve(title: str, size_label: str, unit: str, points: list[tuple[int, float]],
          *, note: str = "") -> None:
    """A growth curve: each size with its value and the ratio to the first size's value (the
    baseline measured in the same run). Flat means the ratios stay near 1."""
    base = points[0][1] or 1.0
    print(f"\n{title}")
    if note:
        print(f"  ({note})")
    print(f"  {size_label:>14} {unit:>14}  ratio to {points[0][0]:,}")
    for size, value in points:
        print(f"  {size:>14,} {value:>14,.2f}  {value / base:5.2f}x")
