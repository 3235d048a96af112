"""Flow control at the broker: a subscriber that reads nothing cannot make it grow.

The subscriber here is a raw socket that subscribes and then never reads, the worst
case: nothing on the client side applies any policy, so the broker's own bound must hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import asyncipc
from asyncipc.protocol import PREAMBLE, ErrorCode, FrameDecoder, Hello, Overflow, Sub, encode

HIGH_WATER = 1024 * 1024
PAYLOAD = 64 * 1024
COUNT = 400  # 25 MiB: many times every buffer on the way


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[tuple[asyncipc.Broker, str]]:
    async with asyncipc.Broker(high_water=HIGH_WATER) as b:
        listener = await b.listen(f"unix://{tmp_path}/b.sock")
        yield b, listener.url


async def stalled_subscriber(
    url: str, overflow: Overflow
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(url.removeprefix("unix://"))
    writer.write(PREAMBLE + encode(Hello({"version": 1})))
    writer.write(encode(Sub(1, "flood", None, overflow)))
    writer.write(encode(asyncipc.protocol.Ping()))
    decoder = FrameDecoder()
    frames: list[object] = []
    while not any(isinstance(f, asyncipc.protocol.Pong) for f in frames):
        frames += decoder.feed(await asyncio.wait_for(reader.read(4096), 5))
    return reader, writer  # subscribed; from now on it reads nothing


async def run_until_stalled(task: asyncio.Task[None], broker: asyncipc.Broker) -> int:
    """Let the publisher run until it stops making progress; the largest buffer seen."""
    peak = 0
    for _ in range(40):
        await asyncio.sleep(0.025)
        peak = max(peak, broker.buffered)
    return peak


async def publish_all(bus: asyncipc.Bus, sent: list[int]) -> None:
    for i in range(COUNT):
        await bus.publish("flood", bytes(PAYLOAD))
        sent[0] = i + 1


async def test_block_bounds_the_broker_and_holds_the_publisher(
    broker: tuple[asyncipc.Broker, str],
) -> None:
    b, url = broker
    _, writer = await stalled_subscriber(url, Overflow.BLOCK)
    async with asyncipc.connect(url) as bus:
        sent = [0]
        task = asyncio.create_task(publish_all(bus, sent))
        peak = await run_until_stalled(task, b)
        assert not task.done(), "the publisher is held back"
        assert sent[0] < COUNT
        # The high-water mark, plus what one read from the publisher can hold.
        assert peak <= HIGH_WATER + 2 * 1024 * 1024, f"broker buffered {peak} bytes"
        writer.transport.abort()  # the slow subscriber goes: the publisher is released
        await asyncio.wait_for(task, 30)
        assert sent[0] == COUNT


async def test_drop_policy_bounds_the_broker_and_publisher_goes_on(
    broker: tuple[asyncipc.Broker, str],
) -> None:
    b, url = broker
    _, writer = await stalled_subscriber(url, Overflow.DROP_NEW)
    async with asyncipc.connect(url) as bus:
        sent = [0]
        peak = 0
        task = asyncio.create_task(publish_all(bus, sent))
        while not task.done():
            peak = max(peak, b.buffered)
            await asyncio.sleep(0.005)
        await task
        await bus.flush()
        assert sent[0] == COUNT
        assert b.stats.dropped > 0
        assert peak <= HIGH_WATER + 2 * 1024 * 1024, f"broker buffered {peak} bytes"
    writer.close()


async def test_error_policy_cuts_the_subscription_off_with_an_error_frame(
    broker: tuple[asyncipc.Broker, str],
) -> None:
    b, url = broker
    reader, writer = await stalled_subscriber(url, Overflow.ERROR)
    async with asyncipc.connect(url) as bus:
        for _ in range(COUNT // 4):
            await bus.publish("flood", bytes(PAYLOAD))
        await bus.flush()
        assert b.stats.slow_consumers == 1
        # No route left: a request on the subject now finds nobody.
        with pytest.raises(asyncipc.NoResponders):
            await bus.request("flood", b"", timeout=5)
    decoder = FrameDecoder(max_frame=16 * 1024 * 1024)
    errors: list[asyncipc.protocol.Err] = []
    while not errors:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
        assert chunk, "connection closed before the error frame"
        errors += [f for f in decoder.feed(chunk) if isinstance(f, asyncipc.protocol.Err)]
    assert errors[0].code == ErrorCode.SLOW_CONSUMER
    assert errors[0].sid == 1
    assert "cut off" in errors[0].message
    writer.close()


async def test_memory_broker_bounded_under_a_stalled_in_process_subscriber() -> None:
    """The same bound over memory://, where frames are objects rather than bytes."""
    async with asyncipc.Broker(high_water=HIGH_WATER) as b:
        await b.listen("memory://flow")
        async with (
            asyncipc.connect("memory://flow") as pub,
            asyncipc.connect("memory://flow") as sb,
        ):
            sub = sb.subscribe("flood", max_pending=4)
            await sb.flush()
            sent = [0]
            task = asyncio.create_task(publish_all(pub, sent))
            peak = await run_until_stalled(task, b)
            assert not task.done()
            assert peak <= 2 * HIGH_WATER + PAYLOAD
            got = 0
            async for _ in sub:
                got += 1
                if got == COUNT:
                    break
            await task
