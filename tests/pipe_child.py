"""Child processes for tests/test_pipe.py: ``python tests/pipe_child.py MODE [ARGS]``.

Each mode is a real program started over inherited pipes (``Broker.spawn`` or
``spawn_peer``), or a broker that starts one:

* ``worker [DELAY [URL]]``: waits DELAY seconds (a slow start), connects to URL (default
  ``pipe:``), serves
  ``work`` in the queue group ``workers`` and ``ctl.<pid>``, says ``ready`` (a request,
  repeated until someone answers), and exits 0 on ``quit`` or when its parent goes
  (printing what its bus said);
* ``parent``: a broker that spawns a ``worker`` and prints ``parent ready <pid>``, then
  waits to be killed;
* ``stdio``: reads a line from stdin, publishes it on ``stdio``, prints it upper-cased:
  the child's stdin and stdout are its own;
* ``raw garbage|badframe|vanish|lastwords [FIFO]``: speaks bytes, not the API, on the inherited
  pipes (or on a pair of FIFOs got from the broker at FIFO, by the handshake of
  docs/transports.md), then prints (hex) what came back until EOF, or vanishes mid-frame,
  or right after 100 whole PUB frames (``lastwords``).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import struct
import sys

import asyncipc
from asyncipc.protocol import PREAMBLE, Hello, Pub, encode
from asyncipc.transports.pipe import ENV_VAR


async def say_ready(bus: asyncipc.Bus) -> None:
    """Request ``ready`` until the parent answers: it may subscribe after we started."""
    while True:
        try:
            await bus.request("ready", str(os.getpid()).encode(), timeout=10)
            return
        except asyncipc.NoResponders:
            await asyncio.sleep(0.02)


async def worker(delay: float, url: str) -> None:
    await asyncio.sleep(delay)
    async with asyncipc.connect(url, name=f"worker-{os.getpid()}") as bus:

        @bus.handler("work", queue="workers")
        async def work(msg: asyncipc.Message) -> bytes:
            return json.dumps({"pid": os.getpid(), "result": msg.data.decode().upper()}).encode()

        ctl = bus.subscribe(f"ctl.{os.getpid()}")
        try:
            await say_ready(bus)
            async for msg in ctl:
                if msg.reply_to is not None:
                    await bus.publish(msg.reply_to, b"bye")
                if msg.data == b"quit":
                    return
        except asyncipc.BrokenLinkError as exc:
            print(f"worker {os.getpid()} saw: {exc}", flush=True)


async def parent() -> None:
    async with asyncipc.Broker() as broker:
        await broker.listen("memory://parent")
        async with asyncipc.connect("memory://parent") as bus:
            ready = bus.subscribe("ready")
            await bus.flush()
            child = await broker.spawn([sys.executable, __file__, "worker"])
            msg = await ready.next_msg(timeout=30)
            await bus.publish(msg.reply_to or "", b"ok")
            print(f"parent ready {child.pid}", flush=True)
            await asyncio.Event().wait()  # until killed


async def stdio() -> None:
    line = sys.stdin.readline().strip()
    async with asyncipc.connect("pipe:") as bus:
        await bus.publish("stdio", line.encode())
    print(line.upper(), flush=True)


def fifo_handshake(path: str) -> tuple[int, int]:
    """docs/transports.md, fifo://, by hand: the read and write ends of a new client."""
    cid = os.urandom(16).hex()
    up, down = f"{path}.d/{cid}.up", f"{path}.d/{cid}.down"
    os.mkfifo(up, 0o600)
    os.mkfifo(down, 0o600)
    r = os.open(down, os.O_RDONLY | os.O_NONBLOCK)
    rendezvous = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.write(rendezvous, b"AIPC-FIFO/1 %s\n" % cid.encode())
    os.close(rendezvous)
    select.select([r], [], [], 30)
    assert os.read(r, 16) == b"OK\n"
    w = os.open(up, os.O_WRONLY)
    os.unlink(up)
    os.unlink(down)
    os.set_blocking(r, True)
    return r, w


def raw(mode: str, fifo: str | None) -> None:
    if fifo is None:
        r, w = (int(fd) for fd in os.environ[ENV_VAR].split(","))
    else:
        r, w = fifo_handshake(fifo)
    hello = PREAMBLE + encode(Hello({"version": 1}))
    if mode == "garbage":
        os.write(w, b"\x00\xff" * 32)
    elif mode == "badframe":
        os.write(w, hello + struct.pack(">IB", 5, 0xEE) + b"junk")
    elif mode == "lastwords":  # a whole handshake and 100 PUBs, gone before any answer
        pubs = b"".join(encode(Pub("last.words", b"%d" % i)) for i in range(100))
        os.write(w, hello + pubs)
        os._exit(0)
    else:  # vanish: half a PUB, then gone without closing anything
        pub = encode(Pub("partial.x", b"y" * 1000))
        os.write(w, hello + pub[: len(pub) // 2])
        os._exit(0)
    answer = b""
    while chunk := os.read(r, 65536):
        answer += chunk
    print(answer.hex(), flush=True)


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "worker":
        delay = float(argv[1]) if len(argv) > 1 else 0.0
        asyncio.run(worker(delay, argv[2] if len(argv) > 2 else "pipe:"))
    elif mode == "parent":
        asyncio.run(parent())
    elif mode == "stdio":
        asyncio.run(stdio())
    elif mode == "raw":
        raw(argv[1], argv[2] if len(argv) > 2 else None)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
