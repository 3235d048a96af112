"""A reader that never reads cannot make the broker hold what it asked for (issue 13,
item 3).

Server-Sent Events (``?max_bytes=``), the JSON WebSocket and gRPC ``Subscribe`` used to
take any ``max_bytes``/``max_pending``: asking for a terabyte and then not reading made the
broker hold everything published (1.5 GB over SSE, 1.3 GB over gRPC). Each reader here is
a real client (a raw socket for SSE and the WebSocket, so that nothing on its side reads
ahead; a grpcio stub for gRPC) that asks for far more than the broker allows, reads the
first answer, and then stops reading while 190 MiB are published. The adapter's queues,
the broker's buffers and the process's RSS must stay bounded, the bounds in effect are
told to the reader, and its policy applies (dropped and counted, or cut off as slow).
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

import asyncipc
from asyncipc.adapters.grpc.proto import bus_pb2 as pb
from asyncipc.adapters.grpc.proto import bus_pb2_grpc as pb_grpc
from asyncipc.adapters.rest import RestServer

pytestmark = pytest.mark.timeout(60)

HIGH_WATER = 256 * 1024  # the broker's: what a subscription's max_bytes is capped to
SIZE = 64 * 1024
COUNT = 3000  # 190 MiB published to a reader that reads nothing
HUGE_BYTES = 1 << 40
HUGE_PENDING = (1 << 32) - 1
RSS_BOUND = 64 * 1024 * 1024  # growth allowed; without the caps it is ~200 MiB


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@asynccontextmanager
async def rss_watch() -> AsyncIterator[list[int]]:
    """Samples the process's RSS growth while the block runs: ``[peak growth]``."""
    base = rss()
    peak = [0]
    running = True

    async def sample() -> None:
        while running:
            peak[0] = max(peak[0], rss() - base)
            await asyncio.sleep(0.01)

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        running = False
        await task
        peak[0] = max(peak[0], rss() - base)


async def small_window_connection(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection whose receive buffer is small: the kernel holds little for a
    reader that stops, so what is tested is what the broker holds."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await asyncio.open_connection(sock=sock, limit=1 << 24)


@asynccontextmanager
async def broker(**options: Any) -> AsyncIterator[tuple[asyncipc.Broker, RestServer, str, str]]:
    async with asyncipc.Broker(high_water=HIGH_WATER, **options) as b:
        rest = await b.listen("http://127.0.0.1:0")
        assert isinstance(rest, RestServer)
        grpc_url = (await b.listen("grpc://127.0.0.1:0")).url
        tcp = (await b.listen("tcp://127.0.0.1:0")).url
        yield b, rest, grpc_url, tcp


async def flood(tcp: asyncipc.Bus | str, subject: str) -> None:
    async with asyncipc.connect(tcp) as pub:  # type: ignore[arg-type]
        for i in range(COUNT):
            await pub.publish(subject, i.to_bytes(4, "big") + bytes(SIZE - 4))
        await pub.flush()


async def request_p99(tcp: str, n: int = 1000) -> float:
    """A healthy client's request round trip over tcp to a tcp responder: the p99, s.
    After a full collection, so that the garbage of a flood before it is not counted."""
    gc.collect()
    async with asyncipc.connect(tcp) as service, asyncipc.connect(tcp) as client:
        service.serve("health.echo", lambda msg: _echo(msg))
        await service.flush()
        times = []
        for i in range(n):
            started = time.perf_counter()
            reply = await client.request("health.echo", b"%d" % i, timeout=5)
            times.append(time.perf_counter() - started)
            assert reply.data == b"%d" % i
    times.sort()
    return times[int(n * 0.99) - 1]


async def _echo(msg: asyncipc.Message) -> bytes:
    return msg.data


def p99_within_2x(what: str, unloaded: float, attacked: float) -> None:
    print(
        f"\n{what}: healthy request p99 {unloaded * 1e3:.2f} ms unloaded, "
        f"{attacked * 1e3:.2f} ms while the reader holds its share "
        f"({attacked / unloaded:.2f}x)"
    )
    # 2x, plus 20 ms of slack: on a machine shared with other work the p99 of a 0.1 ms
    # round trip is the scheduler's (12 ms at a load average of 12, measured); this is
    # not a benchmark, it catches a broker that stalls while the reader holds its share.
    assert attacked <= 2 * unloaded + 0.020, (unloaded, attacked)


def report(what: str, received: int, growth: int, extra: str = "") -> None:
    print(
        f"\n{what}: asked max_bytes=2^40; {COUNT} x {SIZE // 1024} KiB published, "
        f"{received} reached the reader; RSS growth {growth / 2**20:.1f} MiB {extra}"
    )


async def test_sse_reader_asking_a_terabyte_gets_the_broker_cap() -> None:
    async with broker() as (b, rest, _, tcp):
        unloaded = await request_p99(tcp)
        reader, writer = await small_window_connection(rest.url)
        writer.write(
            f"GET /v1/subscribe/sse?overflow=drop_new&max_bytes={HUGE_BYTES}"
            f"&max_pending={HUGE_PENDING} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        )
        await asyncio.wait_for(reader.readuntil(b"event: subscribed"), 5)
        head = await asyncio.wait_for(reader.readuntil(b"}\n\n"), 5)
        assert f'"max_pending":8192,"max_bytes":{HIGH_WATER}'.encode() in head
        async with rss_watch() as growth:
            publishing = asyncio.create_task(flood(tcp, "sse"))
            peak_held = 0
            while not publishing.done():
                peak_held = max(peak_held, rest.queued + b.buffered)
                await asyncio.sleep(0.005)
            await publishing
        dropped = rest.dropped + sum(s.dropped for s in rest._live)
        assert dropped > 0, "its drop_new policy applied at the capped bound"
        p99_within_2x("SSE", unloaded, await request_p99(tcp))
        # The adapter's queue (capped), the broker's buffer for its bus (high_water),
        # and the other clients' buffers: never what it asked for.
        assert peak_held <= 2 * HIGH_WATER + 4 * SIZE, peak_held
        assert growth[0] < RSS_BOUND, growth[0]
        # Now it reads: what was not dropped arrives.
        body = b""
        want = COUNT - dropped
        while body.count(b"\nid: ") < want:
            chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
            assert chunk
            body += chunk
        writer.close()
        ids = re.findall(rb"\nid: (\d+)\n", body)
        assert len(ids) == want
        report("SSE", want, growth[0], f"peak held {peak_held / 1024:.0f} KiB, {dropped} dropped")


async def test_sse_block_reader_asking_a_terabyte_is_cut_off_as_slow() -> None:
    async with broker(block_timeout=0.5) as (b, rest, _, tcp):
        reader, writer = await small_window_connection(rest.url)
        writer.write(
            f"GET /v1/subscribe/held?max_bytes={HUGE_BYTES}&max_pending={HUGE_PENDING} "
            "HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        )
        await asyncio.wait_for(reader.readuntil(b"event: subscribed"), 5)
        async with rss_watch() as growth:
            await asyncio.wait_for(flood(tcp, "held"), 30)  # held back, then let go
        assert b.stats.slow_consumers == 1
        assert growth[0] < RSS_BOUND, growth[0]
        body = b""
        while b"event: error" not in body:
            chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
            assert chunk, "the stream ended without saying why"
            body += chunk
        writer.close()
        assert b'"error":"slow_consumer"' in body
        assert b"block_timeout" in body
        report("SSE block", body.count(b"\nid: "), growth[0], "then cut off as slow")


def ws_text(payload: bytes) -> bytes:
    """One masked WebSocket text frame, as a client must send it (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    head = b"\x81" + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


async def test_ws_json_reader_asking_a_terabyte_gets_the_broker_cap() -> None:
    async with broker() as (_, rest, _, tcp):
        unloaded = await request_p99(tcp)
        reader, writer = await small_window_connection(rest.url)
        writer.write(
            b"GET /v1/ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert b" 101 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        op = (
            '{"op":"subscribe","id":1,"subject":"ws","overflow":"drop_new",'
            f'"max_bytes":{HUGE_BYTES},"max_pending":{HUGE_PENDING}}}'
        )
        writer.write(ws_text(op.encode()))
        said = await asyncio.wait_for(reader.readuntil(b'"op":"subscribed"'), 5)
        said += await asyncio.wait_for(reader.readuntil(b"}"), 5)
        assert f'"max_pending":8192,"max_bytes":{HIGH_WATER}'.encode() in said, said
        async with rss_watch() as growth:
            await asyncio.wait_for(flood(tcp, "ws"), 30)
        dropped = rest.dropped + sum(s.dropped for s in rest._live)
        assert dropped > 0
        assert rest.queued <= HIGH_WATER + SIZE
        assert growth[0] < RSS_BOUND, growth[0]
        p99_within_2x("WebSocket JSON", unloaded, await request_p99(tcp))
        body = b""
        want = COUNT - dropped
        while body.count(b'"op":"message"') < want:
            chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
            assert chunk
            body += chunk
        writer.close()
        report("WebSocket JSON", want, growth[0], f"{dropped} dropped")


async def test_grpc_subscriber_asking_a_terabyte_gets_the_broker_cap() -> None:
    async with broker() as (b, _, grpc_url, tcp):
        unloaded = await request_p99(tcp)
        channel = grpc.aio.insecure_channel(grpc_url.removeprefix("grpc://"))
        try:
            stub = pb_grpc.BusStub(channel)
            call = stub.Subscribe(
                pb.SubscribeRequest(
                    subject="g",
                    overflow=pb.OVERFLOW_DROP_NEW,
                    max_bytes=HUGE_BYTES,
                    max_pending=HUGE_PENDING,
                )
            )
            metadata = dict(await asyncio.wait_for(call.initial_metadata(), 5))
            assert metadata["asyncipc-max-bytes"] == str(HIGH_WATER)
            assert metadata["asyncipc-max-pending"] == "8192"
            async with rss_watch() as growth:
                await asyncio.wait_for(flood(tcp, "g"), 30)  # the call is not read meanwhile
            attacked = await request_p99(tcp)
            received = 0
            while True:
                try:
                    msg = await asyncio.wait_for(call.read(), 1.0)
                except TimeoutError:
                    break
                assert msg is not grpc.aio.EOF
                received += 1
            call.cancel()
        finally:
            await channel.close()
            for _ in range(500):  # the call's drops are counted when it has ended
                if b.stats.transport("grpc").dropped:
                    break
                await asyncio.sleep(0.01)
        dropped = b.stats.transport("grpc").dropped
        report("gRPC Subscribe", received, growth[0], f"{dropped} dropped")
        p99_within_2x("gRPC Subscribe", unloaded, attacked)
        assert 0 < received < COUNT, "its drop_new policy applied at the capped bound"
        assert dropped == COUNT - received, "every message is delivered or counted"
        # The capped queue, the broker's buffer, and gRPC's own flow-control windows.
        assert received * SIZE < 32 * 1024 * 1024
        assert growth[0] < RSS_BOUND, growth[0]
