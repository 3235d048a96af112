"""Client roles against the bare aiohttp WebSocket server (``aiohttp_server.py``): the
reference column for the REST adapter. The URL is ``ws://127.0.0.1:PORT``."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

import aiohttp

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


async def pub(args: WorkerArgs) -> None:
    ctl = await Control.open()
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{args.url}/pub") as ws:
        data, warm = payload(args.size), payload(args.size, WARM)
        emit("ready")

        async def send_warm() -> None:
            await ws.send_bytes(warm)

        await warm_up_until_go(ctl, send_warm)
        start_ns = time.monotonic_ns()
        t0 = time.perf_counter()
        for _ in range(args.count):
            await ws.send_bytes(data)
        emit("result", sent=args.count, seconds=time.perf_counter() - t0, start_ns=start_ns)
        await ctl.wait("stop")


async def sub(args: WorkerArgs) -> None:
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        sockets = [
            await stack.enter_async_context(http.ws_connect(f"{args.url}/sub", max_msg_size=0))
            for _ in range(args.conns)
        ]
        emit("ready")

        async def receive(ws: aiohttp.ClientWebSocketResponse, tally: Tally) -> None:
            async for msg in ws:
                if tally.add(msg.data):
                    return

        tallies = [Tally(args.count) for _ in sockets]
        await consume(
            [receive(s, t) for s, t in zip(sockets, tallies, strict=True)], tallies, args.idle
        )


async def responder(args: WorkerArgs) -> None:
    """The server echoes by itself: nothing to do but be there like the others' are."""
    ctl = await Control.open()
    emit("ready")
    await ctl.wait("stop")


async def requester(args: WorkerArgs) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{args.url}/echo") as ws:
        data = payload(args.size)
        samples: list[int] = []
        clock = time.perf_counter_ns
        reply = b""
        for i in range(args.warmup + args.count):
            t0 = clock()
            await ws.send_bytes(data)
            reply = await ws.receive_bytes(timeout=args.timeout)
            if i >= args.warmup:
                samples.append(clock() - t0)
        assert reply == data, "echo mismatch"
        emit("result", **latency_summary(samples))


ROLES: dict[str, Role] = {"pub": pub, "sub": sub, "responder": responder, "requester": requester}

if __name__ == "__main__":
    run_worker(ROLES)
