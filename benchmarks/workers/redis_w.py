"""redis-py (``redis.asyncio``) client roles: Redis pub/sub on a local redis-server.

Redis has no request/reply. The request/reply case is built the way a Redis user would:
the responder subscribes to ``bench.echo`` and publishes each request's payload to
``bench.reply``, to which the requester subscribed beforehand. A request therefore costs
two PUBLISH commands (each itself a round trip to the server) and two deliveries.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

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
REPLY = "bench.reply"

#: PUBLISH is a command with a reply, so one-at-a-time publishing measures round trips,
#: not throughput; a non-transactional pipeline of this many commands is how Redis users
#: publish fast (and the replies pace the publisher, a kind of backpressure).
PIPELINE = 100


def _client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url)


async def _subscribe(r: aioredis.Redis, channel: str) -> PubSub:
    """Subscribe and wait for the server's confirmation."""
    ps = r.pubsub()
    await ps.subscribe(channel)
    async with asyncio.timeout(10):
        while True:
            msg = await ps.get_message(timeout=1.0)
            if msg is not None and msg["type"] == "subscribe":
                return ps


async def pub(args: WorkerArgs) -> None:
    ctl = await Control.open()
    r = _client(args.url)
    try:
        data, warm = payload(args.size), payload(args.size, WARM)
        await r.ping()
        emit("ready")

        async def send_warm() -> None:
            await r.publish(args.subject, warm)

        await warm_up_until_go(ctl, send_warm)
        start_ns = time.monotonic_ns()  # the clock the subscribers stamp with
        t0 = time.perf_counter()
        left = args.count
        while left:
            batch = min(left, PIPELINE)
            pipe = r.pipeline(transaction=False)
            for _ in range(batch):
                pipe.publish(args.subject, data)
            await pipe.execute()
            left -= batch
        emit("result", sent=args.count, seconds=time.perf_counter() - t0, start_ns=start_ns)
        await ctl.wait("stop")
    finally:
        await r.aclose()


async def sub(args: WorkerArgs) -> None:
    clients: list[aioredis.Redis] = []
    pubsubs: list[PubSub] = []
    try:
        for _ in range(args.conns):
            r = _client(args.url)
            clients.append(r)
            pubsubs.append(await _subscribe(r, args.subject))
        emit("ready")

        async def receive(ps: PubSub, tally: Tally) -> None:
            async for msg in ps.listen():
                if msg["type"] == "message" and tally.add(msg["data"]):
                    return

        tallies = [Tally(args.count) for _ in pubsubs]
        await consume(
            [receive(p, t) for p, t in zip(pubsubs, tallies, strict=True)], tallies, args.idle
        )
    finally:
        for ps in pubsubs:
            await ps.aclose()  # type: ignore[no-untyped-call]
        for r in clients:
            await r.aclose()


async def responder(args: WorkerArgs) -> None:
    ctl = await Control.open()
    r = _client(args.url)
    ps = await _subscribe(r, ECHO)
    try:

        async def serve() -> None:
            async for msg in ps.listen():
                if msg["type"] == "message":
                    await r.publish(REPLY, msg["data"])

        task = asyncio.ensure_future(serve())
        emit("ready")
        await ctl.wait("stop")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await ps.aclose()  # type: ignore[no-untyped-call]
        await r.aclose()


async def requester(args: WorkerArgs) -> None:
    r = _client(args.url)
    ps = await _subscribe(r, REPLY)
    try:
        data = payload(args.size)
        samples: list[int] = []
        clock = time.perf_counter_ns
        reply: Any = None
        for i in range(args.warmup + args.count):
            t0 = clock()
            async with asyncio.timeout(args.timeout):
                await r.publish(ECHO, data)
                reply = None
                while reply is None:
                    reply = await ps.get_message(ignore_subscribe_messages=True, timeout=None)
            if i >= args.warmup:
                samples.append(clock() - t0)
        reply = reply["data"]
        assert reply == data, "echo mismatch"
        emit("result", **latency_summary(samples))
    finally:
        await ps.aclose()  # type: ignore[no-untyped-call]
        await r.aclose()


ROLES: dict[str, Role] = {"pub": pub, "sub": sub, "responder": responder, "requester": requester}

if __name__ == "__main__":
    run_worker(ROLES)
