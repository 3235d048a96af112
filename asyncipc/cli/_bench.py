"""``asyncipc bench``: pub/sub and request/reply against a running broker, like ``nats bench``.

Every publisher, subscriber, requester and responder is a connection of its own, in this
one process and event loop. That measures what a single Python process can push through
the broker, not the broker alone: for the broker's own ceiling run several ``bench``
processes at once (their figures add up), and compare peers with ``benchmarks/``, which
spreads the sides over processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from .._connect import TOKEN_ENV, connect
from ..client import Bus
from ..message import Message
from ..options import ConnectOptions
from ..subscription import Subscription
from ._clients import _client_url
from ._common import EXIT_OK, CommandError, _env, _positive_int

__all__ = ["add_bench_command"]

PROGRESS_INTERVAL = 0.1
"""Seconds between redraws of the progress bar."""


@dataclass
class Side:
    """What one connection did: messages, bytes and seconds from its first to its last."""

    role: str
    msgs: int = 0
    seconds: float = 0.0
    latencies_us: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.msgs / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Report:
    """A bench run: its parameters and each side's figures (``--json`` prints it)."""

    mode: str
    url: str
    subject: str
    size: int
    msgs: int
    sides: list[Side]
    seconds: float
    lost: int = 0

    def figures(self) -> dict[str, Any]:
        doc = asdict(self)
        for side in doc["sides"]:
            latencies = side.pop("latencies_us")
            side["msgs_per_s"] = side["msgs"] / side["seconds"] if side["seconds"] > 0 else 0.0
            if latencies:
                side.update(_percentiles(latencies))
        doc["aggregate"] = {
            role: {
                "msgs": sum(s.msgs for s in self.sides if s.role == role),
                "msgs_per_s": sum(s.rate for s in self.sides if s.role == role),
                "mb_per_s": sum(s.rate for s in self.sides if s.role == role) * self.size / 1e6,
            }
            for role in dict.fromkeys(s.role for s in self.sides)
        }
        every = [v for s in self.sides for v in s.latencies_us]
        if every:
            doc["aggregate"]["latency"] = _percentiles(every)
        return doc


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {"p50_us": at(0.50), "p90_us": at(0.90), "p99_us": at(0.99), "max_us": ordered[-1]}


class Progress:
    """A one-line bar on ``out`` (stderr), redrawn at most every PROGRESS_INTERVAL."""

    def __init__(self, total: int, label: str, out: TextIO, enabled: bool) -> None:
        self.total = max(1, total)
        self.label = label
        self.out = out
        self.enabled = enabled
        self.done = 0
        self._drawn = 0.0

    def add(self, n: int = 1) -> None:
        self.done += n
        if self.enabled:
            now = time.monotonic()
            if now - self._drawn >= PROGRESS_INTERVAL or self.done >= self.total:
                self._drawn = now
                self.draw()

    def draw(self) -> None:
        width = 30
        part = min(1.0, self.done / self.total)
        bar = "#" * int(part * width)
        self.out.write(f"\r{self.label} [{bar:<{width}}] {part:4.0%} {self.done:,}/{self.total:,}")
        self.out.flush()

    def close(self) -> None:
        if self.enabled:
            self.draw()
            self.out.write("\n")
            self.out.flush()


async def _open(args: argparse.Namespace, url: str, name: str) -> Bus:
    token = args.token or _env(TOKEN_ENV)
    return await connect(url, token=token, name=name, options=ConnectOptions(reconnect=False))


async def _pubsub(args: argparse.Namespace, url: str, progress: Progress) -> Report:
    data = os.urandom(args.size)
    per_pub = _split(args.msgs, args.pub)
    expected = args.msgs  # each subscriber gets every message
    subs = [await _open(args, url, f"bench sub {i}") for i in range(args.sub)]
    pubs = [await _open(args, url, f"bench pub {i}") for i in range(args.pub)]
    try:
        sides = [Side("sub") for _ in subs]
        subscriptions = [
            bus.subscribe(
                args.subject,
                max_pending=max(65536, expected),
                max_bytes=max(64 << 20, 2 * expected * (args.size + 64)),
            )
            for bus in subs
        ]
        for bus in subs:
            await bus.flush()

        async def subscriber(sub: Subscription, side: Side) -> None:
            first = 0.0
            async for _ in sub:
                if not side.msgs:
                    first = time.perf_counter()
                side.msgs += 1
                progress.add()
                if side.msgs == expected:
                    break
            side.seconds = time.perf_counter() - first

        receiving = [
            asyncio.create_task(subscriber(sub, side))
            for sub, side in zip(subscriptions, sides, strict=True)
        ]

        async def publisher(bus: Bus, count: int, side: Side) -> None:
            start = time.perf_counter()
            for _ in range(count):
                await bus.publish(args.subject, data)
                side.msgs += 1
                if not subs:
                    progress.add()
            await bus.flush()
            side.seconds = time.perf_counter() - start

        pub_sides = [Side("pub") for _ in pubs]
        started = time.perf_counter()
        await asyncio.gather(
            *(publisher(b, n, s) for b, n, s in zip(pubs, per_pub, pub_sides, strict=True))
        )
        lost = 0
        if receiving:
            _, late = await asyncio.wait(receiving, timeout=args.wait)
            for task in late:
                task.cancel()
            await asyncio.gather(*receiving, return_exceptions=True)
            lost = sum(expected - s.msgs for s in sides)
        elapsed = time.perf_counter() - started
        for side in sides:
            if side.msgs and not side.seconds:
                side.seconds = elapsed
        return Report(
            "pubsub", url, args.subject, args.size, args.msgs, pub_sides + sides, elapsed, lost
        )
    finally:
        for bus in pubs + subs:
            await bus.close()


async def _reqrep(args: argparse.Namespace, url: str, progress: Progress) -> Report:
    data = os.urandom(args.size)
    responders: list[Bus] = []
    if not args.no_responder:
        for i in range(args.responders):
            bus = await _open(args, url, f"bench responder {i}")
            responders.append(bus)

            async def echo(msg: Message) -> bytes:
                return msg.data

            bus.serve(args.subject, echo, queue="bench")
            await bus.flush()
    clients = [await _open(args, url, f"bench requester {i}") for i in range(args.clients)]
    try:

        async def requester(bus: Bus, count: int, side: Side) -> None:
            clock = time.perf_counter
            start = clock()
            for _ in range(count):
                t0 = clock()
                await bus.request(args.subject, data, timeout=args.timeout)
                side.latencies_us.append((clock() - t0) * 1e6)
                side.msgs += 1
                progress.add()
            side.seconds = clock() - start

        sides = [Side("request") for _ in clients]
        started = time.perf_counter()
        counts = _split(args.msgs, args.clients)
        await asyncio.gather(
            *(requester(b, n, s) for b, n, s in zip(clients, counts, sides, strict=True))
        )
        elapsed = time.perf_counter() - started
        return Report("reqrep", url, args.subject, args.size, args.msgs, sides, elapsed)
    finally:
        for bus in clients + responders:
            await bus.close()


def _split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` shares that differ by at most one."""
    if parts <= 0:
        return []
    share, extra = divmod(total, parts)
    return [share + (1 if i < extra else 0) for i in range(parts)]


def _table(doc: dict[str, Any]) -> str:
    lines = [
        f"{doc['mode']} on {doc['subject']!r} at {doc['url']}: {doc['msgs']:,} messages "
        f"of {doc['size']:,} B in {doc['seconds']:.2f} s",
        "",
        f"{'side':<10} {'msgs':>10} {'msgs/s':>12} {'MB/s':>9} {'p50 us':>9} {'p99 us':>9}",
    ]

    def row(name: str, msgs: int, rate: float, fig: dict[str, Any]) -> str:
        p50 = f"{fig['p50_us']:.0f}" if "p50_us" in fig else "-"
        p99 = f"{fig['p99_us']:.0f}" if "p99_us" in fig else "-"
        mb = rate * doc["size"] / 1e6
        return f"{name:<10} {msgs:>10,} {rate:>12,.0f} {mb:>9.2f} {p50:>9} {p99:>9}"

    for i, side in enumerate(doc["sides"]):
        lines.append(row(f"{side['role']} {i}", side["msgs"], side["msgs_per_s"], side))
    aggregate = doc["aggregate"]
    for role, fig in aggregate.items():
        if role == "latency":
            continue
        extra = aggregate.get("latency", {}) if role == "request" else {}
        lines.append(row(f"{role} all", fig["msgs"], fig["msgs_per_s"], extra))
    if doc.get("lost"):
        lines += ["", f"LOST: {doc['lost']:,} deliveries did not arrive within --wait"]
    return "\n".join(lines)


async def _bench(args: argparse.Namespace) -> int:
    url = _client_url(args)
    if args.mode == "pubsub" and not args.pub:
        raise CommandError("--pub must be at least 1")
    total = args.msgs * max(1, args.sub) if args.mode == "pubsub" and args.sub else args.msgs
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = Progress(total, f"{args.mode}", sys.stderr, show)
    run = _pubsub if args.mode == "pubsub" else _reqrep
    report = await run(args, url, progress)
    progress.close()
    doc = report.figures()
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(_table(doc))
    return EXIT_OK if not report.lost else 1


def add_bench_command(commands: Any, client: argparse.ArgumentParser) -> None:
    """Add ``bench`` to the parser."""
    p = commands.add_parser(
        "bench",
        parents=[client],
        help="measure pub/sub or request/reply against a running broker",
        description="Publish and subscribe (pubsub) or request and reply (reqrep) against "
        "a running broker, with a progress bar on stderr and a summary table (or --json) on "
        "stdout. Every side is a connection of its own, all in this one process: run "
        "several bench processes for more load. Exit 1 if messages were lost.",
        epilog="Examples:\n"
        "  asyncipc bench pubsub --pub 1 --sub 2 --msgs 100000 --size 128\n"
        "  asyncipc bench reqrep --clients 4 --msgs 20000\n"
        "  asyncipc bench reqrep --no-responder --subject pricing.quote  # an existing service",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mode", choices=["pubsub", "reqrep"])
    p.add_argument("--subject", default="bench.test", help="default: bench.test")
    p.add_argument("--msgs", type=_positive_int, default=100_000, help="messages in all")
    p.add_argument("--size", type=int, default=128, metavar="BYTES", help="payload size")
    p.add_argument("--pub", type=int, default=1, metavar="N", help="pubsub: publishers")
    p.add_argument("--sub", type=int, default=1, metavar="N", help="pubsub: subscribers (0: none)")
    p.add_argument(
        "--clients", type=_positive_int, default=1, metavar="N", help="reqrep: requesters"
    )
    p.add_argument(
        "--responders", type=_positive_int, default=1, metavar="N", help="reqrep: echo responders"
    )
    p.add_argument(
        "--no-responder",
        action="store_true",
        help="reqrep: start no responder; request a service already on --subject",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="reqrep: seconds per request")
    p.add_argument(
        "--wait", type=float, default=30.0, help="pubsub: seconds to wait for the last delivery"
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    bar = p.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress", action="store_true", default=None, help="draw the bar even if not a tty"
    )
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_bench, interrupted=None, log_level=logging.ERROR)
