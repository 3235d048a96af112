"""Fire-and-forget metrics over UDP: hosts report samples, a collector keeps the latest.

    python examples/udp_metrics.py                   # its own broker on udp://127.0.0.1
    asyncipc broker --listen udp://127.0.0.1:4333 &
    python examples/udp_metrics.py --url udp://127.0.0.1:4333

Metrics are what UDP is for: a sample that goes missing is replaced by the next one, so
nobody should wait for acknowledgements or retransmissions. Each reporter has its own
connection (its own UDP socket) and publishes ``metrics.<host>.<name>`` samples; the
collector subscribes to ``metrics.>`` with ``overflow="drop_oldest"`` (when it falls
behind, old samples go, not new ones) and answers ``collector.latest`` requests. A
dashboard asks for the latest values with a short time-out and asks again if the request
or its reply was lost: that is how request/reply is used over a lossy channel.

At the end it prints what was sent and what the receivers counted as lost
(``bus.peer.extra["stats"]``, see docs/transports.md, UDP). Exits 0 once the dashboard
has the latest value of every metric, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from typing import Any

import msgspec

import asyncipc

HOSTS = ("web-1", "web-2", "db-1")


class Sample(msgspec.Struct):
    v: float
    i: int


NAMES = ("cpu", "mem")


async def report(url: str, host: str, samples: int) -> Any:
    """One host: ``samples`` readings of each metric, fire and forget."""
    async with asyncipc.connect(url, name=host) as bus:
        for i in range(samples):
            for k, name in enumerate(NAMES):
                value = round(50 + 40 * math.sin(i / (7 + k) + HOSTS.index(host)), 2)
                # publish() returns at once: UDP, nobody acknowledges a sample.
                await bus.publish(f"metrics.{host}.{name}", Sample(v=value, i=i))
        await bus.flush()
        return bus.peer.extra["stats"]


async def ask_latest(bus: asyncipc.Bus, attempts: int = 5) -> dict[str, float] | None:
    """A request over UDP: a short time-out, and ask again if it runs out."""
    for _ in range(attempts):
        try:
            return await bus.request("collector.latest", timeout=0.5, response=dict[str, float])
        except asyncipc.RequestTimeout:
            continue  # the request or the reply was lost: ask again
    return None


async def run(url: str, samples: int) -> int:
    expected = len(HOSTS) * len(NAMES) * samples
    latest: dict[str, float] = {}
    received = 0
    done = asyncio.Event()

    async def on_sample(msg: asyncipc.Message) -> None:
        nonlocal received
        received += 1
        latest[msg.subject.removeprefix("metrics.")] = msg.body.v  # type: ignore[attr-defined]
        if received == expected:
            done.set()

    async def serve_latest(msg: asyncipc.Message) -> dict[str, float]:
        return latest

    async with asyncipc.connect(url, name="collector") as collector:
        sub = collector.subscribe(
            "metrics.>", overflow="drop_oldest", model=Sample, callback=on_sample
        )
        collector.serve("collector.latest", serve_latest)
        await collector.flush()

        sent = await asyncio.gather(*(report(url, host, samples) for host in HOSTS))
        try:  # every sample, unless some were lost: then as many as came
            await asyncio.wait_for(done.wait(), 5)
        except TimeoutError:
            pass

        async with asyncipc.connect(url, name="dashboard") as dashboard:
            answer = await ask_latest(dashboard)

        stats = collector.peer.extra["stats"]
        print(f"asyncipc UDP metrics over {url}")
        for host, s in zip(HOSTS, sent, strict=True):
            print(f"  {host:<8} sent {s.sent:>5} datagrams")
        print(f"  collector received {received} of {expected} samples")
        print(
            f"  collector's link: lost {stats.lost}, reordered {stats.reordered}, "
            f"kernel drops {stats.kernel_drops}; subscription dropped {sub.dropped}"
        )
    if answer is None:
        print("  the dashboard got no answer to collector.latest", file=sys.stderr)
        return 1
    for key in sorted(answer):
        print(f"  latest {key:<12} {answer[key]:6.2f}")
    missing = {f"{h}.{n}" for h in HOSTS for n in NAMES} - set(answer)
    if missing:
        print(f"  no value at all for {sorted(missing)}", file=sys.stderr)
        return 1
    return 0


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a broker's udp:// URL (default: start one here)")
    parser.add_argument("--samples", type=int, default=200, help="per metric and host")
    args = parser.parse_args(argv)
    if args.url:
        return await run(args.url, args.samples)
    async with asyncipc.Broker() as broker:
        listener = await broker.listen("udp://127.0.0.1:0")
        return await run(listener.url, args.samples)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
