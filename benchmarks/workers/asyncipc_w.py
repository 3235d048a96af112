"""asyncipc client roles against an ``asyncipc_broker`` process (unix://, tcp://, udp://)."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

import asyncipc

from ._common import (
    WARM,
    Control,
    Role,
    Tally,
    WorkerArgs,
    consume,
    emit,
    latency_summary,
    payload,
    run_worker,
    warm_up_until_go,
)

ECHO = "bench.echo"


async def pub(args: WorkerArgs) -> None:
    ctl = await Control.open()
    async with asyncipc.connect(args.url) as bus:
        data, warm = payload(args.size), payload(args.size, WARM)
        emit("ready")

        async def send_warm() -> None:
            await bus.publish(args.subject, warm)
            await bus.flush(timeout=5)

        await warm_up_until_go(ctl, send_warm)
        start_ns = time.monotonic_ns()  # the clock the subscribers stamp with
        t0 = time.perf_counter()
        for _ in range(args.count):
            await bus.publish(args.subject, data)
        await bus.flush(timeout=60)
        emit("result", sent=args.count, seconds=time.perf_counter() - t0, start_ns=start_ns)
        await ctl.wait("stop")


async def sub(args: WorkerArgs) -> None:
    async with AsyncExitStack() as stack:
        subs: list[asyncipc.Subscription] = []
        for _ in range(args.conns):
            bus = await stack.enter_async_context(asyncipc.connect(args.url))
            # Default bounds and overflow="block": the publisher is slowed down rather
            # than anything being dropped or queued without bound.
            subs.append(await stack.enter_async_context(bus.subscribe(args.subject)))
            await bus.flush(timeout=5)  # the broker has the subscription
        emit("ready")

        async def receive(s: asyncipc.Subscription, tally: Tally) -> None:
            async for msg in s:
                if tally.add(msg.data):
                    return

        tallies = [Tally(args.count) for _ in subs]
        await consume(
            [receive(s, t) for s, t in zip(subs, tallies, strict=True)], tallies, args.idle
        )


async def responder(args: WorkerArgs) -> None:
    ctl = await Control.open()
    async with asyncipc.connect(args.url) as bus:

        @bus.handler(ECHO)
        async def echo(msg: asyncipc.Message) -> bytes:
            return msg.data

        await bus.flush(timeout=5)
        emit("ready")
        await ctl.wait("stop")


async def requester(args: WorkerArgs) -> None:
    async with asyncipc.connect(args.url) as bus:
        data = payload(args.size)
        samples: list[int] = []
        clock = time.perf_counter_ns
        reply = None
        for i in range(args.warmup + args.count):
            t0 = clock()
            reply = await bus.request(ECHO, data, timeout=args.timeout)
            if i >= args.warmup:
                samples.append(clock() - t0)
        assert reply is not None
        assert reply.data == data, "echo mismatch"
        emit("result", **latency_summary(samples))


ROLES: dict[str, Role] = {"pub": pub, "sub": sub, "responder": responder, "requester": requester}

if __name__ == "__main__":
    run_worker(ROLES)
