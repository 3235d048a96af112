"""pyzmq (``zmq.asyncio``) client roles through a ``zmq_proxy`` broker process.

PUB/SUB goes publisher → XSUB|XPUB proxy → subscriber, REQ/REP goes requester →
ROUTER|DEALER proxy → responder: the same three-process topology as the brokered systems.

pyzmq has two common ways to move bytes, and both are columns (``--idiom``): ``copy``,
the default, where ``send`` copies the payload into a ZeroMQ message and ``recv`` returns
``bytes``; and ``nocopy``, ``copy=False`` on both sides, where ``send`` hands the buffer to
ZeroMQ and ``recv`` returns a ``zmq.Frame`` read through its ``buffer`` (a memoryview,
no copy). pyzmq's docs recommend ``copy=False`` for large messages only (it costs a
Python object and a tracker per frame); both are shown, and the summary takes the faster.
"""

from __future__ import annotations

import asyncio
import time

import zmq
import zmq.asyncio

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


def _socket(ctx: zmq.asyncio.Context, kind: int, url: str) -> zmq.asyncio.Socket:
    sock = ctx.socket(kind)
    # ZeroMQ PUB/SUB has no backpressure: at the high-water mark it drops. Unbounded
    # queues (0) make it deliver everything, which is what the counting cases need;
    # memory is the price, and the run is short.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    return sock


async def pub(args: WorkerArgs) -> None:
    ctl = await Control.open()
    ctx = zmq.asyncio.Context()
    try:
        sock = _socket(ctx, zmq.PUB, args.url)
        topic = args.subject.encode()
        data, warm = payload(args.size), payload(args.size, WARM)
        emit("ready")

        async def send_warm() -> None:
            await sock.send_multipart([topic, warm])

        await warm_up_until_go(ctl, send_warm)
        start_ns = time.monotonic_ns()  # the clock the subscribers stamp with
        t0 = time.perf_counter()
        copy = args.idiom != "nocopy"
        for _ in range(args.count):
            await sock.send_multipart([topic, data], copy=copy)
        # Nothing to flush: a PUB socket has no acknowledgement. Staying connected until
        # "stop" lets the queued messages leave before the socket closes.
        emit("result", sent=args.count, seconds=time.perf_counter() - t0, start_ns=start_ns)
        await ctl.wait("stop")
    finally:
        ctx.destroy(linger=0)


async def sub(args: WorkerArgs) -> None:
    ctx = zmq.asyncio.Context()
    try:
        socks = []
        for _ in range(args.conns):
            sock = _socket(ctx, zmq.SUB, args.url)
            sock.setsockopt(zmq.SUBSCRIBE, args.subject.encode())
            socks.append(sock)
        # No way to confirm a subscription reached the publisher: the warm-up messages
        # are the confirmation (the publisher repeats them until we have seen one).
        emit("ready")

        async def receive(sock: zmq.asyncio.Socket, tally: Tally) -> None:
            while True:
                frames = await sock.recv_multipart()
                if tally.add(frames[1]):
                    return

        async def receive_frames(sock: zmq.asyncio.Socket, tally: Tally) -> None:
            while True:
                frames = await sock.recv_multipart(copy=False)
                if tally.add(frames[1].buffer):  # type: ignore[arg-type]
                    return

        if args.idiom == "nocopy":
            receive = receive_frames

        tallies = [Tally(args.count) for _ in socks]
        await consume(
            [receive(s, t) for s, t in zip(socks, tallies, strict=True)], tallies, args.idle
        )
    finally:
        ctx.destroy(linger=0)


async def responder(args: WorkerArgs) -> None:
    ctl = await Control.open()
    ctx = zmq.asyncio.Context()
    try:
        sock = _socket(ctx, zmq.REP, args.url)

        async def serve() -> None:
            while True:
                await sock.send(await sock.recv())

        async def serve_frames() -> None:
            while True:
                await sock.send(await sock.recv(copy=False), copy=False)

        if args.idiom == "nocopy":
            serve = serve_frames

        task = asyncio.ensure_future(serve())
        emit("ready")
        await ctl.wait("stop")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        ctx.destroy(linger=0)


async def requester(args: WorkerArgs) -> None:
    ctx = zmq.asyncio.Context()
    try:
        sock = _socket(ctx, zmq.REQ, args.url)
        data = payload(args.size)
        samples: list[int] = []
        clock = time.perf_counter_ns
        reply: bytes | zmq.Frame = b""
        copy = args.idiom != "nocopy"
        for i in range(args.warmup + args.count):
            t0 = clock()
            # A per-request timeout, as asyncipc and nats-py have built into request().
            async with asyncio.timeout(args.timeout):
                await sock.send(data, copy=copy)
                reply = await sock.recv(copy=copy)
            if i >= args.warmup:
                samples.append(clock() - t0)
        assert bytes(reply) == data, "echo mismatch"
        emit("result", **latency_summary(samples))
    finally:
        ctx.destroy(linger=0)


ROLES: dict[str, Role] = {"pub": pub, "sub": sub, "responder": responder, "requester": requester}

if __name__ == "__main__":
    run_worker(ROLES)
