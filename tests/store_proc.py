"""Child processes for tests/test_store.py: a FileLog writer in a process of its own.

``python store_proc.py append DIR COUNT [JOURNAL]``
    appends COUNT records (fsync="always", batches of 50 in flight) and prints the
    sequence of each one as soon as its ``sync()`` returned: what it acknowledged. With
    JOURNAL the writes go through a ``PowerCutIO`` that journals every fsync, so that the
    test can apply a power cut after killing this process.

``python store_proc.py shared DIR WRITER COUNT SEGMENT_BYTES``
    appends COUNT records ``b"WRITER:i"`` to a shared log with ``append_batch`` (batches
    of 1 to 20), then prints ``done``.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

from asyncipc.streams.store.fileio import PowerCutIO
from asyncipc.streams.store.filelog import FileLog


async def append(directory: str, count: int, journal: str | None) -> None:
    io = PowerCutIO(journal) if journal else None
    log = await FileLog.open(directory, fsync="always", io=io, segment_bytes=256 << 10)
    out = sys.stdout
    print("ready", flush=True)
    i = 0
    while i < count:
        n = min(50, count - i)
        seqs = [log.append("kill.x", None, f"r{i + k}".encode(), time.time_ns()) for k in range(n)]
        await log.sync(seqs[-1])
        out.write("".join(f"{s}\n" for s in seqs))
        out.flush()
        i += n
    await log.close()


async def shared(directory: str, writer: str, count: int, segment_bytes: int) -> None:
    log = await FileLog.open(directory, shared=True, segment_bytes=segment_bytes)
    rng = random.Random(writer)
    i = 0
    while i < count:
        n = min(rng.randint(1, 20), count - i)
        items = [
            (f"w.{writer}", {"w": writer}, f"{writer}:{i + k}".encode(), time.time_ns())
            for k in range(n)
        ]
        await log.append_batch(items)
        i += n
    await log.close()
    print("done", flush=True)


def main() -> None:
    mode, directory = sys.argv[1], sys.argv[2]
    if mode == "append":
        journal = sys.argv[4] if len(sys.argv) > 4 else None
        asyncio.run(append(directory, int(sys.argv[3]), journal))
    else:
        asyncio.run(shared(directory, sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))


if __name__ == "__main__":
    main()
