"""The attacks of ``test_exhaustion.py``, in a process of their own so that the healthy
client measured beside them does not share an event loop (or a GIL) with them.

``python tests/attacker.py MODE URL HOLD``: opens the raw connections of ``MODE``, prints
``started`` once they are open, keeps them for ``HOLD`` seconds, then prints one JSON
line with what the broker answered and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import sys
import time
from typing import Any

from asyncipc.errors import ProtocolError
from asyncipc.protocol import (
    PREAMBLE,
    Err,
    ErrorCode,
    FrameDecoder,
    Hello,
    Overflow,
    Pub,
    Sub,
    encode,
)

MiB = 1024 * 1024
HELLO = encode(Hello({"version": 1}))

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_raw(url: str) -> Conn:
    if url.startswith("unix://"):
        return await asyncio.open_unix_connection(url.removeprefix("unix://"))
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


def err_codes(data: bytes) -> list[int]:
    try:
        frames = FrameDecoder(msg_extra=4).feed(data)
    except ProtocolError:
        return []
    return [f.code for f in frames if isinstance(f, Err)]


async def answer(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, bool]:
    """What the broker sent until it closed (or ``timeout``), and whether it closed (an
    end of file or a reset)."""
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        return data, False
    except ConnectionError:
        pass
    return data, True


def started() -> None:
    print("started", flush=True)


async def huge_hellos(url: str, hold: float) -> dict[str, Any]:
    """64 loops, each: announce an 8 MiB HELLO, read the answer, then try to send the
    body anyway (8 MiB as fast as the socket takes it), and again, for ``hold`` s.
    Counts each answer: ERR FRAME_TOO_LARGE (``refused``), ERR LIMIT (``limited``: the
    address refused at once for its failed handshakes), a close or reset before any ERR
    was read (``reset``), or nothing within 2 s (``unanswered``)."""
    counts = {"attempts": 0, "refused": 0, "limited": 0, "reset": 0, "unanswered": 0}
    chunk = bytes(256 * 1024)

    async def loop(stop: float) -> None:
        while time.monotonic() < stop:
            reader, writer = await open_raw(url)
            counts["attempts"] += 1
            writer.write(PREAMBLE + struct.pack(">IB", 8 * MiB - 1, 1))
            try:
                async with asyncio.timeout(2):
                    codes = err_codes(await reader.read(65536))
            except TimeoutError:
                counts["unanswered"] += 1
            except ConnectionError:
                counts["reset"] += 1
            else:
                if codes[:1] == [ErrorCode.FRAME_TOO_LARGE]:
                    counts["refused"] += 1
                elif codes[:1] == [ErrorCode.LIMIT]:
                    counts["limited"] += 1
                else:
                    counts["reset"] += 1
            with contextlib.suppress(ConnectionError):
                for _ in range(32):
                    writer.write(chunk)
                    await writer.drain()
            writer.close()

    stop = time.monotonic() + hold
    started()
    await asyncio.gather(*(loop(stop) for _ in range(64)))
    return counts


async def hold_many(url: str, hold: float, n: int, first: bytes, code: int) -> dict[str, Any]:
    """``n`` connections that each send ``first`` and then nothing, held ``hold`` s."""
    conns: list[Conn] = []
    for _ in range(n):
        try:
            reader, writer = await open_raw(url)
        except OSError:
            continue
        writer.write(first)
        conns.append((reader, writer))
    started()
    await asyncio.sleep(hold)
    answers = await asyncio.gather(*(answer(r, 0.2) for r, _ in conns))
    for _, writer in conns:
        writer.close()
    # A refused connection hears ERR, or, when more are refused at once than the broker
    # lets linger (_limits.MAX_LINGERING), may be reset before it reads it: "closed". One
    # refused after its address was penalized hears ERR and is then held open for a while
    # (_limits.HOLD): when it was accepted late it is not closed yet. "served" are the
    # rest: answered, with no ERR, and still open.
    return {
        "opened": len(conns),
        "closed": sum(closed for _, closed in answers),
        "refused": sum(code in err_codes(data) for data, _ in answers),
        "served": sum(
            bool(data) and not closed and not err_codes(data) for data, closed in answers
        ),
    }


async def slowloris(url: str, hold: float) -> dict[str, Any]:
    """16 clients: a HELLO, 8 MiB minus 1,000 bytes of a PUB, then a byte every 0.5 s."""
    frame = encode(Pub("slow", bytes(8 * MiB - 64)))
    cut: list[float] = []

    async def one() -> None:
        reader, writer = await open_raw(url)
        writer.write(PREAMBLE + HELLO + frame[:-1000])
        t0 = time.monotonic()

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for i in range(int(hold * 2)):
                    await asyncio.sleep(0.5)
                    writer.write(frame[-1000 + i : -999 + i])

        feeder = asyncio.create_task(trickle())
        got, _ = await answer(reader, hold)
        feeder.cancel()
        writer.close()
        if ErrorCode.PEER_TIMEOUT in err_codes(got):
            cut.append(time.monotonic() - t0)

    started()
    await asyncio.gather(*(one() for _ in range(16)))
    return {"cut": cut}


async def stalled_block(url: str, hold: float) -> dict[str, Any]:
    """Path 5: a subscriber with ``overflow=block`` on ``attack.block`` that never reads
    (a raw socket; a new one every 3 s, as a persistent attacker would), beside a steady
    publisher on that subject: 16 KiB messages, 1,000 a second at most. Reports how many
    were published and the publisher's longest wait for one publish."""
    import asyncipc  # the publisher is a real client

    stop = time.monotonic() + hold
    stalled: list[asyncio.StreamWriter] = []

    async def subscribers() -> None:
        while time.monotonic() < stop:
            _, writer = await open_raw(url)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            writer.write(PREAMBLE + HELLO + encode(Sub(7, "attack.block", None, Overflow.BLOCK)))
            stalled.append(writer)
            await asyncio.sleep(3)

    async with asyncipc.connect(url) as pub:
        feeder = asyncio.create_task(subscribers())
        await asyncio.sleep(0.2)
        started()
        published, longest, payload = 0, 0.0, bytes(16 * 1024)
        while time.monotonic() < stop:
            t = time.monotonic()
            await pub.publish("attack.block", payload)
            longest = max(longest, time.monotonic() - t)
            published += 1
            await asyncio.sleep(0.001)
        feeder.cancel()
    for writer in stalled:
        writer.close()
    return {"published": published, "longest_wait_s": round(longest, 3), "stalled": len(stalled)}


async def main(mode: str, url: str, hold: float) -> None:
    if mode == "hello":
        result = await huge_hellos(url, hold)
    elif mode == "stall":
        head = PREAMBLE + struct.pack(">IB", 64 * 1024 - 1, 1) + b"{" * (60 * 1024)
        result = await hold_many(url, hold, 600, head, ErrorCode.LIMIT)
    elif mode == "flood":
        result = await hold_many(url, hold, 1000, PREAMBLE + HELLO, ErrorCode.LIMIT)
    elif mode == "emfile":
        result = await hold_many(url, hold, 300, PREAMBLE + HELLO, ErrorCode.LIMIT)
    elif mode == "slowloris":
        result = await slowloris(url, hold)
    elif mode == "block":
        result = await stalled_block(url, hold)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
