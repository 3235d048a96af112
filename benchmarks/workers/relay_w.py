"""Client roles of the reference column: bare asyncio protocols around ``relay.py``.

A message is a frame: a 4-byte big-endian length, then the payload. The publisher builds
each frame (``struct`` header + payload, one join) and writes it to its transport,
waiting only while the transport says its buffer is full; the subscriber cuts the frames
out of what it reads, one ``bytes`` slice per payload, and hands each to the tally. No
library, no subjects, no message objects: the least any asyncio program pays to get a
payload from one process to another through a third, which is what the other columns are
read against. Every process on uvloop (``run_worker``).
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from typing import cast

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

_HEADER = struct.Struct(">I")


def _path(url: str) -> str:
    return url.removeprefix("unix://")


class Framed(asyncio.Protocol):
    """One connection: frames out with :meth:`send`, frames in to ``on_frame``. An empty
    frame is the relay saying this connection is registered (``registered``)."""

    def __init__(self, on_frame: Callable[[bytes], None]) -> None:
        self.on_frame = on_frame
        self.transport: asyncio.Transport | None = None
        self.rest = b""
        loop = asyncio.get_running_loop()
        self.registered = loop.create_future()
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, data: bytes) -> None:
        self.transport.write(_HEADER.pack(len(data)) + data)  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
        pos, end, n = 0, 0, len(data)
        unpack, on_frame = _HEADER.unpack_from, self.on_frame
        while pos + 4 <= n:
            end = pos + 4 + unpack(data, pos)[0]
            if end > n:
                break
            if end == pos + 4:
                if not self.registered.done():
                    self.registered.set_result(None)
            else:
                on_frame(data[pos + 4 : end])
            pos = end
        self.rest = data[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.registered.done():
            self.registered.set_exception(ConnectionError("relay closed the connection"))


async def _connect(url: str, on_frame: Callable[[bytes], None]) -> Framed:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_unix_connection(lambda: Framed(on_frame), _path(url))
    return proto


def _ignore(data: bytes) -> None:
    pass


async def pub(args: WorkerArgs) -> None:
    ctl = await Control.open()
    conn = await _connect(args.url, _ignore)
    try:
        data, warm = payload(args.size), payload(args.size, WARM)
        emit("ready")

        async def send_warm() -> None:
            conn.send(warm)

        await warm_up_until_go(ctl, send_warm)
        start_ns = time.monotonic_ns()  # the clock the subscribers stamp with
        t0 = time.perf_counter()
        send, writable = conn.send, conn.writable
        for _ in range(args.count):
            send(data)
            if not writable.is_set():
                await writable.wait()
        emit("result", sent=args.count, seconds=time.perf_counter() - t0, start_ns=start_ns)
        await ctl.wait("stop")
    finally:
        if conn.transport is not None:
            conn.transport.close()


async def sub(args: WorkerArgs) -> None:
    conns: list[Framed] = []
    try:
        tallies = [Tally(args.count) for _ in range(args.conns)]
        done = [asyncio.Event() for _ in tallies]
        for tally, event in zip(tallies, done, strict=True):

            def on_frame(data: bytes, tally: Tally = tally, event: asyncio.Event = event) -> None:
                if tally.add(data):
                    event.set()

            conns.append(await _connect(args.url, on_frame))
        for conn in conns:
            await asyncio.wait_for(conn.registered, 10)
        emit("ready")
        await consume([event.wait() for event in done], tallies, args.idle)
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()


async def responder(args: WorkerArgs) -> None:
    ctl = await Control.open()

    def echo(data: bytes) -> None:
        conn.send(data)

    conn = await _connect(args.url, echo)
    try:
        await asyncio.wait_for(conn.registered, 10)
        emit("ready")
        await ctl.wait("stop")
    finally:
        if conn.transport is not None:
            conn.transport.close()


async def requester(args: WorkerArgs) -> None:
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Future[bytes]] = []

    def on_reply(data: bytes) -> None:
        fut = waiting.pop()
        if not fut.done():
            fut.set_result(data)

    conn = await _connect(args.url, on_reply)
    try:
        data = payload(args.size)
        samples: list[int] = []
        clock = time.perf_counter_ns
        reply = b""
        for i in range(args.warmup + args.count):
            t0 = clock()
            fut: asyncio.Future[bytes] = loop.create_future()
            waiting.append(fut)
            conn.send(data)
            # A per-request timeout, as the libraries have built into request().
            async with asyncio.timeout(args.timeout):
                reply = await fut
            if i >= args.warmup:
                samples.append(clock() - t0)
        assert reply == data, "echo mismatch"
        emit("result", **latency_summary(samples))
    finally:
        if conn.transport is not None:
            conn.transport.close()


ROLES: dict[str, Role] = {"pub": pub, "sub": sub, "responder": responder, "requester": requester}

if __name__ == "__main__":
    run_worker(ROLES)
