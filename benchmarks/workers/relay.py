"""The reference relay: the least a Python process can do to pass messages on.

``python -m benchmarks.workers.relay FRONT_PATH BACK_PATH`` listens on two Unix sockets,
FRONT for publishers and requesters, BACK for subscribers and responders, and writes
every chunk read on one side to every connection on the other, as read: no routing, no
parsing, no message objects, one ``transport.write`` per chunk and destination. The
clients (``relay_w.py``) send length-prefixed frames, so with one connection writing to a
side (as in every case) the stream each reader gets is whole frames, in order. A broker
must at least find the frames to route them; this relay does not even do that, which is
what makes it a limit rather than a competitor.

Plain asyncio protocols on uvloop, as the brokers and clients of the other columns run.
Backpressure as a broker has to do it: while any destination's write buffer is over its
high-water mark (``pause_writing``), reading stops on every connection of the other side.
A connection accepted on BACK is sent an empty frame once it is in the set that gets
writes, so a subscriber knows it will see everything from then on. SIGTERM or SIGINT
closes it.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import cast

import uvloop

#: An empty frame: "you are registered" to a subscriber or responder.
REGISTERED = b"\x00\x00\x00\x00"


class Side:
    """The connections of one socket, and how many of them cannot take more writes."""

    def __init__(self) -> None:
        self.conns: set[Conn] = set()
        self.blocked = 0
        self.other: Side = self


class Conn(asyncio.Protocol):
    def __init__(self, side: Side, greet: bool) -> None:
        self.side = side
        self.greet = greet
        self.transport: asyncio.Transport | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.side.conns.add(self)
        if self.side.other.blocked:
            transport.pause_reading()
        if self.greet:
            transport.write(REGISTERED)

    def data_received(self, data: bytes) -> None:
        for conn in self.side.other.conns:
            conn.transport.write(data)  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        self.paused = True
        self.side.blocked += 1
        if self.side.blocked == 1:
            for conn in self.side.other.conns:
                conn.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.paused = False
        self.side.blocked -= 1
        if not self.side.blocked:
            for conn in self.side.other.conns:
                if not conn.transport.is_closing():  # type: ignore[union-attr]
                    conn.transport.resume_reading()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.side.conns.discard(self)
        if self.paused:  # a reader gone while full must not stop the other side for good
            self.resume_writing()


async def serve(front_path: str, back_path: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    front, back = Side(), Side()
    front.other, back.other = back, front
    servers = [
        await loop.create_unix_server(lambda: Conn(front, greet=False), front_path),
        await loop.create_unix_server(lambda: Conn(back, greet=True), back_path),
    ]
    print("ready", front_path, back_path, flush=True)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: python -m benchmarks.workers.relay FRONT_PATH BACK_PATH")
    uvloop.run(serve(*argv))


if __name__ == "__main__":
    main(sys.argv[1:])
