"""``file:///dir``: how fast one process appends to the bus log and another tails it.

One writer process publishes ``N`` 64-byte messages to a fresh directory and closes its bus
(which writes what is still queued); one reader process, subscribed before the writer
starts, receives them all. Printed: the writer's publish loop (messages queued for the log
writer: never waits for the disk), its append rate (to the end of the close, so every
message is in the log), the reader's rate from its first message to its last, and the
bytes the log took. Both processes run on uvloop. Not a section of ``benchmarks.run``:
there is no peer to compare with (NATS, ZeroMQ and Redis have no brokerless file bus).

Run: ``python -m benchmarks.file_bus [N]`` (default 200000).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import uvloop

import asyncipc

PAYLOAD = b"x" * 64


async def _writer(directory: str, n: int) -> None:
    async with asyncipc.connect(f"file://{directory}") as bus:
        t0 = time.perf_counter()
        for _ in range(n):
            await bus.publish("bench.x", PAYLOAD)
        t1 = time.perf_counter()
    t2 = time.perf_counter()
    print(f"writer: publish loop {n / (t1 - t0):,.0f} msgs/s, appended {n / (t2 - t0):,.0f} msgs/s")


async def _reader(directory: str, n: int) -> None:
    url = f"file://{directory}"
    async with (
        asyncipc.connect(url) as bus,
        bus.subscribe("bench.x", max_pending=1 << 22, max_bytes=1 << 30) as sub,
    ):
        await bus.flush()
        print("ready", flush=True)
        await sub.next_msg(timeout=60)
        t0 = time.perf_counter()
        got = 1
        async for _ in sub:
            got += 1
            if got == n:
                break
        t1 = time.perf_counter()
    print(f"reader: tailed {n / (t1 - t0):,.0f} msgs/s")


def main() -> None:
    if len(sys.argv) == 4:
        role, directory, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        # uvloop, like every other process the benchmarks start.
        uvloop.run((_writer if role == "writer" else _reader)(directory, n))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    with tempfile.TemporaryDirectory() as directory:
        me = [sys.executable, "-m", "benchmarks.file_bus"]
        reader = subprocess.Popen([*me, "reader", directory, str(n)], stdout=subprocess.PIPE)
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == b"ready"
        subprocess.run([*me, "writer", directory, str(n)], check=True)
        print(reader.stdout.read().decode().strip())
        reader.wait()
        bus = os.path.join(directory, "bus")
        size = sum(os.path.getsize(os.path.join(bus, f)) for f in os.listdir(bus))
        print(f"log: {size:,} bytes for {n:,} messages of {len(PAYLOAD)} B")


if __name__ == "__main__":
    main()
