"""``block_timeout`` (issue 13, item 5): one stalled ``block`` subscriber may hold its
publishers back for that long, not until the keep-alive gives up on it (55 s).

The stalled subscriber is a raw socket that subscribes with ``overflow=block`` and never
reads again; beside it a healthy Bus subscriber reads everything. The publisher must
resume after about ``block_timeout``, the stalled one hears ERR 101 naming its
subscription, the broker counts it, and the healthy subscriber misses nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

import asyncipc
from asyncipc import _metrics
from asyncipc.protocol import (
    PREAMBLE,
    Err,
    ErrorCode,
    FrameDecoder,
    Hello,
    Overflow,
    Ping,
    Pong,
    Sub,
    encode,
)

HIGH_WATER = 256 * 1024
PAYLOAD = 64 * 1024
COUNT = 300  # ~19 MiB: far more than every buffer on the way
BLOCK_TIMEOUT = 0.5


async def stalled_subscriber(
    path: str, subject: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(PREAMBLE + encode(Hello({"version": 1, "name": "stalled"})))
    writer.write(encode(Sub(7, subject, None, Overflow.BLOCK)))
    writer.write(encode(Ping()))
    decoder = FrameDecoder()
    frames: list[object] = []
    while not any(isinstance(f, Pong) for f in frames):
        frames += decoder.feed(await asyncio.wait_for(reader.read(4096), 5))
    return reader, writer  # subscribed; from now on it reads nothing


async def errors_after_draining(reader: asyncio.StreamReader) -> list[Err]:
    """Read what the broker sent the stalled client until its ERR 101 (bounded)."""
    decoder = FrameDecoder()
    errors: list[Err] = []
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
        if not chunk:
            break
        errors += [f for f in decoder.feed(chunk) if isinstance(f, Err)]
    return errors


async def test_a_stalled_block_subscriber_holds_publishers_only_block_timeout(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "b.sock")
    async with asyncipc.Broker(high_water=HIGH_WATER, block_timeout=BLOCK_TIMEOUT) as broker:
        url = (await broker.listen(f"unix://{path}")).url
        reader, writer = await stalled_subscriber(path, "flood")
        async with (
            asyncipc.connect(url) as pub,
            asyncipc.connect(url) as healthy,
            healthy.subscribe("flood", max_bytes=1 << 30, max_pending=1 << 20) as sub,
        ):
            await healthy.flush()
            got: list[int] = []

            async def read_all() -> None:
                async for msg in sub:
                    got.append(int.from_bytes(msg.data[:4], "big"))
                    if len(got) == COUNT:
                        return

            reading = asyncio.create_task(read_all())
            started = time.monotonic()
            gaps: list[float] = []
            last = started
            for i in range(COUNT):
                await pub.publish("flood", i.to_bytes(4, "big") + bytes(PAYLOAD - 4))
                now = time.monotonic()
                gaps.append(now - last)
                last = now
            await pub.flush()
            took = time.monotonic() - started
            await asyncio.wait_for(reading, 10)
            longest = max(gaps)
            print(
                f"\n{COUNT} x {PAYLOAD // 1024} KiB published in {took:.2f} s with a stalled "
                f"block subscriber (block_timeout {BLOCK_TIMEOUT} s); longest wait of one "
                f"publish {longest:.2f} s; slow_consumers={broker.stats.slow_consumers}"
            )
            # Held back about block_timeout, then resumed: not until a keep-alive.
            assert BLOCK_TIMEOUT * 0.8 <= longest < BLOCK_TIMEOUT + 3
            assert took < BLOCK_TIMEOUT + 10
            assert got == list(range(COUNT)), "the healthy subscriber got everything, in order"
            assert broker.stats.slow_consumers == 1
            text = _metrics.render(broker, 0, 0, Counter())
            assert "asyncipc_slow_consumers_total 1" in text
        errors = await errors_after_draining(reader)
        writer.close()
        assert [(e.code, e.sid) for e in errors] == [(ErrorCode.SLOW_CONSUMER, 7)]
        assert "held its publishers back for 0.5 s" in errors[0].message


async def test_a_subscriber_that_keeps_up_is_never_cut_off(tmp_path: Path) -> None:
    """A slow-but-steady reader drains to the low-water mark again and again: it is not
    a slow consumer, however long the publisher is held back in total."""
    path = str(tmp_path / "b.sock")
    async with asyncipc.Broker(high_water=HIGH_WATER, block_timeout=0.3) as broker:
        url = (await broker.listen(f"unix://{path}")).url
        async with (
            asyncipc.connect(url) as pub,
            asyncipc.connect(url) as slow,
            slow.subscribe("steady", max_pending=8) as sub,
        ):
            await slow.flush()
            n = 120

            async def read_slowly() -> int:
                seen = 0
                async for _ in sub:
                    seen += 1
                    if seen % 20 == 0:
                        await asyncio.sleep(0.05)  # 6 pauses: 0.3 s behind in total
                    if seen == n:
                        break
                return seen

            reading = asyncio.create_task(read_slowly())
            for _ in range(n):
                await pub.publish("steady", bytes(PAYLOAD))
            assert await asyncio.wait_for(reading, 20) == n
        assert broker.stats.slow_consumers == 0


@pytest.mark.parametrize("timeout", [0.0])
async def test_block_timeout_zero_disables_it(tmp_path: Path, timeout: float) -> None:
    path = str(tmp_path / "b.sock")
    async with asyncipc.Broker(
        high_water=HIGH_WATER, block_timeout=timeout, drain_timeout=1.0
    ) as broker:
        url = (await broker.listen(f"unix://{path}")).url
        _, writer = await stalled_subscriber(path, "held")
        async with asyncipc.connect(url) as pub:

            async def flood() -> None:
                for _ in range(COUNT):
                    await pub.publish("held", bytes(PAYLOAD))

            task = asyncio.create_task(flood())
            await asyncio.sleep(1.0)
            assert not task.done(), "held back as long as the subscriber stalls"
            assert broker.stats.slow_consumers == 0
            task.cancel()
            writer.transport.abort()  # the stalled one leaves: nothing more to hold back


def test_the_cli_takes_block_timeout() -> None:
    from asyncipc.cli._parser import build_parser

    parse = build_parser().parse_args
    assert parse(["broker"]).block_timeout == asyncipc.BrokerOptions().block_timeout == 5.0
    assert parse(["broker", "--block-timeout", "0.25"]).block_timeout == 0.25
    assert parse(["broker", "--block-timeout", "0"]).block_timeout == 0.0
    for bad in ("-1", "inf", "soon"):
        with pytest.raises(SystemExit):
            parse(["broker", "--block-timeout", bad])


@pytest.mark.one_loop("the broker is a process of its own")
async def test_a_broker_process_started_with_block_timeout_applies_it(tmp_path: Path) -> None:
    """``asyncipc broker --block-timeout 0.3``: a stalled block subscriber holds a publisher
    of another process for about that long, not for ever."""
    from .test_cli import BrokerProc, cli_env

    path = tmp_path / "b.sock"
    proc = BrokerProc(
        f"unix://{path}",
        log=tmp_path / "b.log",
        env=cli_env(),
        args=["--block-timeout", "0.3", "--high-water", "64K"],
    )
    try:
        _, writer = await stalled_subscriber(str(path), "cli")
        async with asyncipc.connect(proc.url) as pub:
            started = time.monotonic()
            for _ in range(200):  # 12.5 MiB
                await pub.publish("cli", bytes(PAYLOAD))
            await pub.flush()
            took = time.monotonic() - started
        writer.close()
        assert took < 4, took  # the default (5 s) would not do
    finally:
        assert proc.stop() == 0
    assert "cut off as slow consumers after holding" in (tmp_path / "b.log").read_text()
