"""nats-py client roles against a nats-server.

nats-py has two common ways to receive, and both are columns (``--idiom``): ``cb``, a
callback subscription, ``await nc.subscribe(subject, cb=handler)``, which is what
nats-py's README and its own ``benchmark/`` scripts (``sub_perf.py``, ``pub_sub_perf.py``,
``latency_perf.py``) use, and ``iter``, ``async for msg in sub.messages``. nats-py runs a
callback straight from the subscription's delivery task, while ``sub.messages`` is an
async generator over the same queue, with a future and a loop turn per message: the
callback is its fast path. Publishing and requesting have one idiom each
(``await nc.publish`` in a loop, then ``flush``; ``await nc.request``), as in its scripts.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

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


async def _connect(url: str) -> Client:
    async def on_error(exc: Exception) -> None:
        # nats-py reports slow consumers and protocol errors here instead of raising;
        # log them so that a cell that lost messages can be explained.
        print(f"nats error: {exc!r}", file=sys.stderr, flush=True)

    return await nats.connect(
        servers=[url], allow_reconnect=False, connect_timeout=5, error_cb=on_error
    )


async def pub(args: WorkerArgs) -> None:
    ctl = await Control.open()
    nc = await _connect(args.url)
    try:
        data, warm = payload(args.size), payload(args.size, WARM)
        emit("ready")

        async def send_warm() -> None:
            await nc.publish(args.subject, warm)
            await nc.flush()

        await warm_up_until_go(ctl, send_warm)
        start_ns = time.monotonic_ns()  # the clock the subscribers stamp with
        t0 = time.perf_counter()
        for _ in range(args.count):
            await nc.publish(args.subject, data)
        await nc.flush(timeout=60)
        emit("result", sent=args.count, seconds=time.perf_counter() - t0, start_ns=start_ns)
        await ctl.wait("stop")
    finally:
        await nc.close()


async def _subscribe(
    nc: Client, subject: str, cb: Callable[[Msg], Awaitable[None]] | None = None
) -> Subscription:
    # Unbounded client-side queues: by default nats-py drops messages (and reports a slow
    # consumer) once 128 MB are pending, and the cases count every message.
    return await nc.subscribe(subject, cb=cb, pending_msgs_limit=0, pending_bytes_limit=0)


async def _iterate(s: Subscription, tally: Tally) -> None:
    async for msg in s.messages:
        if tally.add(msg.data):
            return


async def sub(args: WorkerArgs) -> None:
    clients: list[Client] = []
    try:
        tallies = [Tally(args.count) for _ in range(args.conns)]
        receivers = []
        for tally in tallies:
            nc = await _connect(args.url)
            clients.append(nc)
            if args.idiom == "iter":
                receivers.append(_iterate(await _subscribe(nc, args.subject), tally))
            else:
                done = asyncio.Event()

                async def handler(
                    msg: Msg, tally: Tally = tally, done: asyncio.Event = done
                ) -> None:
                    if tally.add(msg.data):
                        done.set()

                await _subscribe(nc, args.subject, handler)
                receivers.append(done.wait())
            await nc.flush()
        emit("ready")
        await consume(receivers, tallies, args.idle)
    finally:
        for nc in clients:
            await nc.close()


async def responder(args: WorkerArgs) -> None:
    ctl = await Control.open()
    nc = await _connect(args.url)
    try:
        task: asyncio.Future[None] | None = None
        if args.idiom == "iter":

            async def serve(s: Subscription) -> None:
                async for msg in s.messages:
                    await msg.respond(msg.data)

            task = asyncio.ensure_future(serve(await nc.subscribe(ECHO)))
        else:

            async def echo(msg: Msg) -> None:
                await msg.respond(msg.data)

            await nc.subscribe(ECHO, cb=echo)
        await nc.flush()
        emit("ready")
        await ctl.wait("stop")
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        await nc.close()


async def requester(args: WorkerArgs) -> None:
    nc = await _connect(args.url)
    try:
        data = payload(args.size)
        samples: list[int] = []
        clock = time.perf_counter_ns
        for i in range(args.warmup + args.count):
            t0 = clock()
            reply = await nc.request(ECHO, data, timeout=args.timeout)
            if i >= args.warmup:
                samples.append(clock() - t0)
        assert reply.data == data, "echo mismatch"
        emit("result", **latency_summary(samples))
    finally:
        await nc.close()


ROLES: dict[str, Role] = {"pub": pub, "sub": sub, "responder": responder, "requester": requester}

if __name__ == "__main__":
    run_worker(ROLES)
