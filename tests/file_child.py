"""Child processes for tests/test_file_bus.py: ``python file_child.py MODE DIR ...``.

Every mode opens ``file://DIR`` and prints what it saw, one line per fact, so the parent
can compare:

* ``sub DIR SUBJECT N``: subscribes, prints ``ready``, then prints each of N payloads
  (one over 100 bytes as its first 20 and its length);
* ``pub DIR SUBJECT N TAG [SIZE]``: publishes ``TAG i`` for i in 0..N-1 (padded with
  dots to SIZE bytes), prints ``done``;
* ``serve DIR SUBJECT``: answers requests with ``re: <payload>``, prints ``ready``, runs
  until its stdin closes;
* ``request DIR SUBJECT DATA TIMEOUT``: prints the reply, or the exception's class and text;
* ``stream-pub DIR STREAM N``: makes stream STREAM on ``STREAM.>``, publishes N messages
  with acknowledgement (``m i`` on ``STREAM.i``), prints each ack's seq, then ``done``;
* ``consume DIR STREAM CONSUMER N``: takes N messages from a durable consumer, acks each,
  prints ``<seq> <payload>``, then ``done``;
* ``host DIR``: prints ``hosting`` or ``not hosting`` now and for every line it reads on
  stdin, until its stdin closes.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import asyncipc

logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")


def say(*parts: object) -> None:
    print(*parts, flush=True)


async def stdin_closed() -> None:
    await asyncio.to_thread(sys.stdin.read)


async def sub(url: str, subject: str, n: int) -> None:
    async with asyncipc.connect(url) as bus, bus.subscribe(subject, max_pending=1 << 20) as s:
        await bus.flush()
        say("ready")
        for _ in range(n):
            msg = await s.next_msg(timeout=30)
            text = msg.data.decode()
            say(text if len(text) <= 100 else f"{text[:20]}... ({len(text)} bytes)")


async def pub(url: str, subject: str, n: int, tag: str, size: int) -> None:
    async with asyncipc.connect(url) as bus:
        for i in range(n):
            await bus.publish(subject, f"{tag} {i}".encode().ljust(size, b"."))
    say("done")


async def serve(url: str, subject: str) -> None:
    async with asyncipc.connect(url) as bus:

        @bus.handler(subject)
        async def answer(msg: asyncipc.Message) -> bytes:
            return b"re: " + msg.data

        await bus.flush()
        say("ready")
        await stdin_closed()


async def request(url: str, subject: str, data: str, timeout: float) -> None:
    async with asyncipc.connect(url) as bus:
        try:
            reply = await bus.request(subject, data.encode(), timeout=timeout)
        except asyncipc.AsyncIPCError as exc:
            say(type(exc).__name__, exc)
        else:
            say(reply.data.decode())


async def stream_pub(url: str, stream: str, n: int) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream(stream, subjects=[f"{stream}.>"])
        for i in range(n):
            ack = await st.publish(f"{stream}.{i}", f"m {i}".encode())
            say(ack.seq)
    say("done")


async def consume(url: str, stream: str, name: str, n: int) -> None:
    async with asyncipc.connect(url) as bus:
        st = await bus.stream(stream)
        consumer = await st.consumer(name, deliver="all", ack_wait=30.0)
        got = 0
        while got < n:
            for msg in await consumer.fetch(n - got, timeout=5.0):
                await msg.ack_sync()
                say(msg.seq, msg.data.decode())
                got += 1
        await consumer.close()
    say("done")


async def host(url: str) -> None:
    from asyncipc.transports.file import file_bus

    async with asyncipc.connect(url):
        joined = await file_bus(url)
        assert joined is not None
        while True:
            say("hosting" if joined.hosting else "not hosting")
            if not await asyncio.to_thread(sys.stdin.readline):
                break


def main() -> None:
    mode, directory, *args = sys.argv[1:]
    url = f"file://{directory}"
    if mode == "sub":
        asyncio.run(sub(url, args[0], int(args[1])))
    elif mode == "pub":
        asyncio.run(pub(url, args[0], int(args[1]), args[2], int(args[3]) if args[3:] else 0))
    elif mode == "serve":
        asyncio.run(serve(url, args[0]))
    elif mode == "request":
        asyncio.run(request(url, args[0], args[1], float(args[2])))
    elif mode == "stream-pub":
        asyncio.run(stream_pub(url, args[0], int(args[1])))
    elif mode == "consume":
        asyncio.run(consume(url, args[0], args[1], int(args[2])))
    elif mode == "host":
        asyncio.run(host(url))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
