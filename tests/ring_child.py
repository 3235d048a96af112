"""Child processes for tests/test_shm.py and tests/test_mmap.py: ``python ring_child.py MODE ...``.

* ``echo URL``: connects a bus, serves ``echo`` (the payload back), prints ``ready``, runs
  until killed or until its broker goes (then prints ``bus closed``);
* ``publish URL SUBJECT N``: connects a bus, publishes N numbered 64-byte messages
  (``b"%-64d" % i``) on SUBJECT as fast as it can, flushes, prints ``sent``, closes;
* ``channel-echo URL``: opens a direct channel, sends every record back, exits on FIN;
* ``channel-burst URL N``: opens a direct channel, sends N numbered records, prints
  ``sent``, then kills itself with SIGKILL (no FIN: the parent must notice the death);
* ``channel-jitter URL N SEED BIG``: opens a direct channel, sends N numbered records in runs
  of random length after random busy pauses (so that a reader with ``spin=0`` goes to
  sleep exactly as records land), prints ``sent``, closes;
* ``file-writer PATH START COUNT [KILL]``: appends records START.. to a durable ring file,
  printing ``wrote i`` after each, and with KILL sends itself SIGKILL after COUNT;
* ``file-reader PATH COUNT [hold]``: reads COUNT records from a durable ring file, printing
  each; with ``hold`` it then takes one more in place and dies (SIGKILL) holding it;
* ``file-torn PATH``: writes record 0, then a record out of order (header and tail first,
  the way a machine crash can leave the file), half its payload, prints ``torn`` and
  waits to be killed: the test hook for a torn record.
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


async def publish(url: str, subject: str, n: int) -> None:
    async with asyncipc.connect(url, name=f"pub-{os.getpid()}") as bus:
        for i in range(n):
            await bus.publish(subject, b"%-64d" % i)
        await bus.flush()
        print("sent", flush=True)


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


async def channel_jitter(url: str, n: int, seed: int, big: int) -> None:
    """Sends ``n`` numbered records (4, 64 or ``big`` bytes) in runs of random length,
    each run after a random pause of 0 to 300 us: the reader keeps going to sleep just
    as records land. Every 100 records, a 5 ms pause too (see below)."""
    import random
    import time

    from asyncipc.transports.shm import connect_channel

    rnd = random.Random(seed)
    async with await connect_channel(url) as ch:
        i = prev = 0
        while i < n:
            for _ in range(rnd.choice((1, 1, 1, 1, 2, 3, 50))):
                if i < n:
                    await ch.send(i.to_bytes(4, "big") * rnd.choice((1, 16, big // 4)))
                    i += 1
            pause = rnd.random() * 300e-6
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < pause:
                pass  # a busy pause: sleeping would round up to the timer's slack
            if rnd.random() < 0.1:
                await asyncio.sleep(0)
            if i % 100 < prev % 100 or i - prev >= 100:
                # Every 100 records, a real pause: a reader slower than the busy pauses
                # (a loaded machine) still empties the ring and sleeps, 40 times a run.
                await asyncio.sleep(0.005)
            prev = i
        print("sent", flush=True)


async def file_writer(path: str, start: int, count: int, kill: bool) -> None:
    from asyncipc.transports.mmap import open_writer

    writer = await open_writer(path, size="64K")
    for i in range(start, start + count):
        await writer.send(i.to_bytes(4, "big") * 8)
        print("wrote", i, flush=True)
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    await writer.aclose()


async def file_reader(path: str, count: int, hold: bool) -> None:
    from asyncipc.transports.mmap import open_reader

    reader = await open_reader(path)
    for _ in range(count):
        data = await reader.recv()
        print("read", int.from_bytes(data[:4], "big"), flush=True)
    if hold:
        rec = await reader.recv_record()
        print("holding", int.from_bytes(rec.view[:4].tobytes(), "big"), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    await reader.aclose()


async def file_torn(path: str) -> None:
    import struct
    import zlib

    from asyncipc.transports._ring.ring import KIND_DATA, RECORD, TAIL, header_check, record_size
    from asyncipc.transports.mmap import open_writer

    writer = await open_writer(path, size="64K")
    await writer.send((0).to_bytes(4, "big") * 8)
    tx = writer._tx
    assert tx is not None
    payload = (1).to_bytes(4, "big") * 250
    pos = tx.tail
    at = tx._data + pos % tx.capacity
    crc = zlib.crc32(payload)
    tag = (pos >> 4) & 0xFFFFFFFF
    check = header_check(len(payload), crc, tag, KIND_DATA, 0)
    RECORD.pack_into(tx.buffer, at, len(payload), crc, tag, KIND_DATA, 0, check)
    struct.pack_into("<Q", tx.buffer, tx._base + TAIL, pos + record_size(len(payload)))
    tx.buffer[at + 16 : at + 16 + 300] = payload[:300]
    print("torn", flush=True)
    await asyncio.sleep(60)


def main(argv: list[str]) -> None:
    mode, *args = argv
    if mode == "echo":
        asyncio.run(echo(args[0]))
    elif mode == "publish":
        asyncio.run(publish(args[0], args[1], int(args[2])))
    elif mode == "channel-echo":
        asyncio.run(channel_echo(args[0]))
    elif mode == "channel-burst":
        asyncio.run(channel_burst(args[0], int(args[1])))
    elif mode == "channel-jitter":
        asyncio.run(channel_jitter(args[0], int(args[1]), int(args[2]), int(args[3])))
    elif mode == "file-writer":
        asyncio.run(file_writer(args[0], int(args[1]), int(args[2]), len(args) > 3))
    elif mode == "file-reader":
        asyncio.run(file_reader(args[0], int(args[1]), len(args) > 2))
    elif mode == "file-torn":
        asyncio.run(file_torn(args[0]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
