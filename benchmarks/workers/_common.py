"""What every client worker shares: arguments, the stdout/stdin protocol with the
orchestrator, payloads, counting received messages, latency statistics, uvloop.

Only control plumbing lives here. Each system's hot loop (publish, receive, request) is
written out in its own worker module against that library's asyncio API, as a user of
the library would write it, so no shared indirection sits on the measured path other
than :meth:`Tally.add`, which every system pays alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import uvloop

__all__ = [
    "DATA",
    "WARM",
    "Control",
    "Role",
    "Tally",
    "WorkerArgs",
    "consume",
    "emit",
    "latency_summary",
    "payload",
    "run_worker",
    "warm_up_until_go",
]

#: First payload byte of a warm-up message (ignored by counters) and of a counted one.
#: Warm-ups are how a publisher learns that subscriptions have propagated (ZeroMQ's slow
#: joiner) without any system-specific handshake.
WARM = ord("w")
DATA = ord("d")

#: Seconds between warm-up messages while the publisher waits for "go".
WARM_INTERVAL = 0.01


@dataclass(frozen=True)
class WorkerArgs:
    role: str
    url: str
    subject: str
    count: int
    size: int
    conns: int
    warmup: int
    timeout: float
    idle: float
    idiom: str


def parse_args(argv: Sequence[str], roles: Sequence[str]) -> WorkerArgs:
    p = argparse.ArgumentParser(prog="benchmarks worker")
    p.add_argument("role", choices=list(roles))
    p.add_argument("--url", required=True)
    p.add_argument("--subject", default="bench.x")
    p.add_argument("--count", type=int, default=1000, help="messages (or requests) to time")
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    p.add_argument("--conns", type=int, default=1, help="subscriber connections")
    p.add_argument("--warmup", type=int, default=200, help="untimed requests first")
    p.add_argument("--timeout", type=float, default=2.0, help="per request, seconds")
    p.add_argument("--idle", type=float, default=5.0, help="subscriber gives up after")
    # Where a library has two common ways to write the hot loop (nats-py's callback and
    # iterator subscriptions, pyzmq with and without copy=False), each is a column of its
    # own and the worker is told which one to run; the other workers ignore it.
    p.add_argument("--idiom", default="", help="which of the library's idioms to use")
    ns = p.parse_args(argv)
    return WorkerArgs(**vars(ns))


def emit(event: str, **fields: Any) -> None:
    """One JSON line to the orchestrator. A worker that runs asyncipc says in its result
    which build it ran (``asyncipc.compiled``): the orchestrator checks it (``--build``)."""
    if event == "result" and "asyncipc" in sys.modules:
        compiled = sys.modules["asyncipc"].compiled
        fields.setdefault("asyncipc_build", "compiled" if compiled else "pure")
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def payload(size: int, marker: int = DATA) -> bytes:
    return bytes([marker]) + b"x" * (size - 1)


class Control:
    """Commands from the orchestrator on stdin, one per line. EOF counts as ``stop``, so
    a worker whose orchestrator died does not linger."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    @classmethod
    async def open(cls) -> Control:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        return cls(reader)

    async def wait(self, command: str) -> None:
        while True:
            line = (await self._reader.readline()).decode().strip()
            if line == command:
                return
            if not line and self._reader.at_eof():
                if command == "stop":
                    return
                raise RuntimeError(f"stdin closed while waiting for {command!r}")


async def warm_up_until_go(ctl: Control, send_warm: Callable[[], Awaitable[None]]) -> None:
    """Send warm-up messages until the orchestrator says ``go`` (every subscriber has
    seen one, so every subscription is in place end to end)."""
    go = asyncio.ensure_future(ctl.wait("go"))
    try:
        while not go.done():
            await send_warm()
            await asyncio.wait({go}, timeout=WARM_INTERVAL)
        go.result()
    finally:
        go.cancel()


class Tally:
    """Counts one subscriber connection's messages, timestamped on the system-wide
    monotonic clock so that several processes' spans can be merged."""

    __slots__ = ("count", "first_ns", "last_ns", "size", "target", "warm", "warm_seen")

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.first_ns = 0
        self.last_ns = 0
        self.size = 0
        self.warm = asyncio.Event()
        self.warm_seen = 0

    def add(self, data: bytes) -> bool:
        """Count one payload; True once the target is reached."""
        if data[0] == WARM:
            self.warm_seen += 1
            if not self.warm.is_set():
                self.warm.set()
            return False
        now = time.monotonic_ns()
        if not self.count:
            self.first_ns = now
            self.size = len(data)
        self.last_ns = now
        self.count += 1
        return self.count >= self.target

    def as_dict(self) -> dict[str, int]:
        return {
            "count": self.count,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "size": self.size,
        }


async def consume(
    receivers: Sequence[Coroutine[Any, Any, None]], tallies: Sequence[Tally], idle: float
) -> None:
    """Run the receive loops; announce ``warm`` once every connection saw a warm-up, and
    ``result`` when all reached their target or, once every connection is warm, no message
    at all (warm-up or counted) arrived for ``idle`` seconds: messages were lost, and the
    result says how many did arrive. The publisher repeats warm-ups until "go", so a
    stall can only come after it started publishing for real."""

    async def announce_warm() -> None:
        for t in tallies:
            await t.warm.wait()
        emit("warm")

    tasks = [asyncio.ensure_future(r) for r in receivers]
    warm = asyncio.ensure_future(announce_warm())
    complete = False
    try:
        seen, since = -1, time.monotonic()
        while True:
            done, pending = await asyncio.wait(tasks, timeout=0.2)
            for task in done:
                task.result()  # a receive loop that failed fails the worker, loudly
            if not pending:
                complete = True
                break
            total = sum(t.count + t.warm_seen for t in tallies)
            if total != seen or not warm.done():
                seen, since = total, time.monotonic()
            elif time.monotonic() - since > idle:
                break
    finally:
        for task in [*tasks, warm]:
            task.cancel()
        await asyncio.gather(*tasks, warm, return_exceptions=True)
    emit("result", complete=complete, conns=[t.as_dict() for t in tallies])


def latency_summary(samples_ns: Sequence[int]) -> dict[str, float]:
    """Nearest-rank percentiles in microseconds."""
    s = sorted(samples_ns)
    n = len(s)

    def pct(q: float) -> float:
        return s[min(n - 1, max(0, math.ceil(q * n) - 1))] / 1000

    return {
        "count": n,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "min_us": s[0] / 1000,
        "max_us": s[-1] / 1000,
        "mean_us": sum(s) / n / 1000,
    }


Role = Callable[[WorkerArgs], Coroutine[Any, Any, None]]


def run_worker(roles: Mapping[str, Role], argv: Sequence[str] | None = None) -> None:
    """Parse argv, run the chosen role on uvloop (every system's clients alike)."""
    args = parse_args(sys.argv[1:] if argv is None else argv, list(roles))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(roles[args.role](args))
