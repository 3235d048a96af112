"""Direct shm channel roles (``asyncipc.transports.shm``): no broker, no frames.

* ``chan-echo``: listens on ``--url``, sends every record back;
* ``chan-req``: connects, times ``--count`` round trips of ``--size`` bytes after
  ``--warmup`` untimed ones (one in flight at a time, as the ``reqrep`` case);
* ``chan-sink``: listens, receives ``--count`` records; ``--subject in-place`` reads each
  in place (zero-copy, released at once), ``--subject copy`` copies each out (``recv()``);
* ``chan-source``: connects, waits for ``go``, sends ``--count`` records of ``--size``.
"""

from __future__ import annotations

import time

from asyncipc.transports.shm import connect_channel, listen_channel

from ._common import Control, Role, WorkerArgs, emit, latency_summary, payload, run_worker


async def chan_echo(args: WorkerArgs) -> None:
    ctl = await Control.open()
    async with await listen_channel(args.url) as listener:
        emit("ready")
        ch = await listener.accept()
        async for data in ch:
            await ch.send(data)
        await ch.aclose()
    await ctl.wait("stop")


async def chan_req(args: WorkerArgs) -> None:
    async with await connect_channel(args.url) as ch:
        data = payload(args.size)
        samples: list[int] = []
        clock = time.perf_counter_ns
        reply = b""
        for i in range(args.warmup + args.count):
            t0 = clock()
            await ch.send(data)
            reply = await ch.recv()
            if i >= args.warmup:
                samples.append(clock() - t0)
        assert reply == data, "echo mismatch"
        emit("result", **latency_summary(samples))


async def chan_sink(args: WorkerArgs) -> None:
    ctl = await Control.open()
    in_place = args.subject == "in-place"
    async with await listen_channel(args.url) as listener:
        emit("ready")
        ch = await listener.accept()
        first_ns = last_ns = 0
        n = 0
        while n < args.count:
            if in_place:
                with await ch.recv_record() as rec:
                    assert len(rec) == args.size
            else:
                data = await ch.recv()
                assert len(data) == args.size
            last_ns = time.monotonic_ns()
            if not n:
                first_ns = last_ns
            n += 1
        conn = {"count": n, "first_ns": first_ns, "last_ns": last_ns, "size": args.size}
        emit("result", conns=[conn])
        await ch.aclose()
    await ctl.wait("stop")


async def chan_source(args: WorkerArgs) -> None:
    ctl = await Control.open()
    async with await connect_channel(args.url) as ch:
        data = payload(args.size)
        emit("ready")
        await ctl.wait("go")
        start_ns = time.monotonic_ns()
        t0 = time.perf_counter()
        for _ in range(args.count):
            await ch.send(data)
        emit("result", sent=args.count, seconds=time.perf_counter() - t0, start_ns=start_ns)
        await ctl.wait("stop")


ROLES: dict[str, Role] = {
    "chan-echo": chan_echo,
    "chan-req": chan_req,
    "chan-sink": chan_sink,
    "chan-source": chan_source,
}

if __name__ == "__main__":
    run_worker(ROLES)
