"""Frames through shared memory: a broker on shm://, worker processes, a direct channel.

    python examples/shm_pipeline.py [--workers 2] [--frames 40] [--size 1048576]

Two stages, both across processes with no socket on the data path:

1. **Through a broker on ``shm://``.** This process runs the broker and starts
   ``--workers`` worker processes, which connect with ``asyncipc.connect("shm://...")``
   and share ``frames.raw`` as the queue group ``crc``: each frame goes to one worker,
   which answers with its CRC-32 on ``frames.crc``. The parent checks every answer.
2. **Over a direct channel.** The parent opens ``listen_channel`` and one more worker
   connects with ``connect_channel``: no broker, no subjects, byte records. The worker
   reads each frame *in place* (``recv_record``: a view of the shared memory, released
   when it is done) and sends the CRC back.

Prints what flowed and exits 0 when every CRC matched (Linux only, like ``shm://``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import zlib

import asyncipc
from asyncipc.transports.shm import connect_channel, listen_channel


async def worker(url: str, name: str) -> None:
    """Stage 1: answer each frame of the queue group with its CRC-32, until the broker goes."""
    # The broker shutting down is how this pipeline ends: not worth a warning, and not a
    # broker to wait for (reconnect=False: the worker ends with it).
    logging.getLogger("asyncipc").setLevel(logging.ERROR)
    options = asyncipc.ConnectOptions(name=name, reconnect=False)
    async with (
        asyncipc.connect(url, options=options) as bus,
        bus.subscribe("frames.raw", queue="crc") as frames,
    ):
        print("ready", flush=True)
        try:
            async for msg in frames:
                n = int(msg.headers["n"]) if msg.headers else -1
                answer = {"n": n, "crc": zlib.crc32(msg.data), "by": name}
                await bus.publish("frames.crc", answer)  # a dict: sent as JSON
        except asyncipc.ConnectionClosed:
            pass


async def direct_worker(url: str) -> None:
    """Stage 2: read each record in place, send back its CRC-32, until the parent closes."""
    async with await connect_channel(url) as ch:
        print("ready", flush=True)
        while True:
            try:
                rec = await ch.recv_record()
            except asyncipc.BrokenLinkError:
                return  # the parent closed the channel: done
            with rec:
                crc = zlib.crc32(rec.view.memoryview())  # no copy out of the ring
            await ch.send(crc.to_bytes(4, "big"))


async def spawn(*args: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    if line.strip() != b"ready":
        raise SystemExit(f"worker failed to start: {line!r}")
    return proc


async def main(workers: int, count: int, size: int) -> int:
    name = f"pipeline-{os.getpid()}"
    frames = [os.urandom(size) for _ in range(min(count, 8))]
    expected = {i: zlib.crc32(frames[i % len(frames)]) for i in range(count)}
    ok = True
    async with asyncipc.Broker() as broker:
        url = (await broker.listen(f"shm://{name}?size=16M")).url
        procs = [await spawn("--worker", url, f"crc-{i + 1}") for i in range(workers)]
        async with asyncipc.connect(url) as bus, bus.subscribe("frames.crc", model=dict) as answers:
            await bus.flush()
            t0 = time.perf_counter()
            for i in range(count):
                await bus.publish("frames.raw", frames[i % len(frames)], headers={"n": str(i)})
            per_worker: dict[str, int] = {}
            for _ in range(count):
                got = (await answers.next_msg(timeout=30)).body  # type: ignore[attr-defined]
                ok &= expected[got["n"]] == got["crc"]
                per_worker[got["by"]] = per_worker.get(got["by"], 0) + 1
            took = time.perf_counter() - t0
        print(f"shm:// broker     {url}, {workers} workers in their own processes")
        print(f"  frames          {count} x {size:,} bytes, CRCs checked: {'ok' if ok else 'BAD'}")
        print(f"  per worker      {', '.join(f'{k}: {v}' for k, v in sorted(per_worker.items()))}")
        print(f"  throughput      {count * size / took / 1e6:,.0f} MB/s (there and CRC back)")
    for proc in procs:  # the broker closed: each worker's bus ended, and so did the worker
        await asyncio.wait_for(proc.wait(), 30)

    async with await listen_channel(f"shm://{name}-direct?size=16M") as listener:
        proc = await spawn("--direct", listener.url)
        ch = await listener.accept()
        t0 = time.perf_counter()
        matched = 0
        for i in range(count):
            await ch.send(frames[i % len(frames)])
            matched += int.from_bytes(await ch.recv(), "big") == expected[i]
        took = time.perf_counter() - t0
        await ch.aclose()
        await asyncio.wait_for(proc.wait(), 30)
    ok &= matched == count
    print(f"direct channel    pid {os.getpid()} <-> pid {proc.pid}, no broker")
    print(f"  frames          {count}, read in place, CRCs checked: {matched}/{count}")
    print(f"  throughput      {count * size / took / 1e6:,.0f} MB/s (one at a time, round trip)")
    print("every CRC matched" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024 * 1024)
    parser.add_argument("--worker", nargs=2, metavar=("URL", "NAME"), help=argparse.SUPPRESS)
    parser.add_argument("--direct", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(*args.worker))
    elif args.direct:
        asyncio.run(direct_worker(args.direct))
    else:
        sys.exit(asyncio.run(main(args.workers, args.frames, args.size)))
