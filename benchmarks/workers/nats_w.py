"""nats-py client roles against a nats-server."""

from __future__ import annotations

import sys
import time

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


async def sub(args: WorkerArgs) -> None:
    clients: list[Client] = []
    try:
        subs: list[Subscription] = []
        for _ in range(args.conns):
            nc = await _connect(args.url)
            clients.append(nc)
            # Unbounded client-side queues: by default nats-py drops messages (and reports a
            # slow consumer) once 128 MB are pending, and this case counts every message.
            subs.append(
                await nc.subscribe(args.subject, pending_msgs_limit=0, pending_bytes_limit=0)
            )
            await nc.flush()
        emit("ready")

        async def receive(s: Subscription, tally: Tally) -> None:
            async for msg in s.messages:
                if tally.add(msg.data):
                    return

        tallies = [Tally(args.count) for _ in subs]
        await consume(
            [receive(s, t) for s, t in zip(subs, tallies, strict=True)], tallies, args.idle
        )
    finally:
        for nc in clients:
            await nc.close()


async def responder(args: WorkerArgs) -> None:
    ctl = await Control.open()
    nc = await _connect(args.url)
    try:

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        await nc.subscribe(ECHO, cb=echo)
        await nc.flush()
        emit("ready")
        await ctl.wait("stop")
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
