"""Child processes for tests/test_shm.py and tests/test_mmap.py: ``python ring_child.py MODE ...``.

* ``echo URL``: connects a bus, serves ``echo`` (the payload back), prints ``ready``, runs
  until killed or until its broker goes (then prints ``bus closed``);
* ``channel-echo URL``: opens a direct channel, sends every record back, exits on FIN;
* ``channel-burst URL N``: opens a direct channel, sends N numbered records, prints
  ``sent``, then kills itself with SIGKILL (no FIN: the parent must notice the death);
* ``file-writer PATH START COUNT [KILL]``: appends records START.. to a durable ring file,
  printing ``wrote i`` after each, and with KILL sends itself SIGKILL after COUNT;
* ``file-reader PATH COUNT``: reads COUNT records from a durable ring file, printing each.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncipc


async def echo(url: str) -> None:
    async with asyncipc.connect(url, name=f"echo-{os.getpid()}") as bus:

        @bus.handler("echo")
        async def handle(msg: asyncipc.Message) -> bytes:
            return msg.data

        await bus.flush()
        print("ready", flush=True)
        await bus.wait_closed()
        print("bus closed", flush=True)


async def channel_echo(url: str) -> None:
    from asyncipc.transports.shm import connect_channel

    async with await connect_channel(url) as ch:
        print("ready", flush=True)
        async for data in ch:
            await ch.send(data)


async def channel_burst(url: str, n: int) -> None:
    from asyncipc.transports.shm import connect_channel

    ch = await connect_channel(url)
    for i in range(n):
        await ch.send(i.to_bytes(4, "big") * 16)
    print("sent", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


async def file_writer(path: str, start: int, count: int, kill: bool) -> None:
    from asyncipc.transports.mmap import open_writer

    writer = await open_writer(path, size="64K")
    for i in range(start, start + count):
        await writer.send(i.to_bytes(4, "big") * 8)
        print("wrote", i, flush=True)
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    await writer.aclose()


async def file_reader(path: str, count: int) -> None:
    from asyncipc.transports.mmap import open_reader

    reader = await open_reader(path)
    for _ in range(count):
        data = await reader.recv()
        print("read", int.from_bytes(data[:4], "big"), flush=True)
    await reader.aclose()


def main(argv: list[str]) -> None:
    mode, *args = argv
    if mode == "echo":
        asyncio.run(echo(args[0]))
    elif mode == "channel-echo":
        asyncio.run(channel_echo(args[0]))
    elif mode == "channel-burst":
        asyncio.run(channel_burst(args[0], int(args[1])))
    elif mode == "file-writer":
        asyncio.run(file_writer(args[0], int(args[1]), int(args[2]), len(args) > 3))
    elif mode == "file-reader":
        asyncio.run(file_reader(args[0], int(args[1])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
