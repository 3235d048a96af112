"""What a stream promises when the broker is killed: every acknowledged message is there.

A real `asyncipc broker --store` process is SIGKILLed in the middle of a run of
acknowledged publishes (docs/streams.md, "Durability"); the publisher republishes what
was not acknowledged with the same msg_id, as the docs tell users to; after the restart the
stream holds every message, in order, exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import asyncipc
from asyncipc import ConnectOptions

pytestmark = pytest.mark.asyncio

TOTAL = 10_000
KILL_AFTER = 3_000
WINDOW = 200


def _start_broker(sock: Path, store: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "asyncipc",
            "broker",
            "--listen",
            f"unix://{sock}",
            "--store",
            str(store),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.stdout.close()  # the one line we need; the broker's later lines go nowhere
    assert line.startswith(b"listening on"), line
    return proc


async def _publish_all(
    stream: asyncipc.Stream, acked: set[int], start: int, stop_after: int | None
) -> int:
    """Publish from ``start`` on with a window of outstanding acks; return where it stopped
    (the first index not known to be acknowledged) when the link fails or after
    ``stop_after`` acknowledgements."""
    i = start
    while i < TOTAL:
        batch = range(i, min(i + WINDOW, TOTAL))
        futures = [stream.publish_async("durable.x", str(n).encode(), msg_id=str(n)) for n in batch]
        results = await asyncio.gather(*futures, return_exceptions=True)
        for n, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                return min(
                    n for n, r in zip(batch, results, strict=True) if isinstance(r, BaseException)
                )
            assert result.stream == "DUR"
            acked.add(n)
        i = batch.stop
        if stop_after is not None and len(acked) >= stop_after:
            return i
    return i


@pytest.mark.one_loop("the store of a broker process SIGKILLed")
async def test_sigkill_in_the_middle_of_acknowledged_publishes(tmp_path: Path) -> None:
    sock = tmp_path / "b.sock"
    store = tmp_path / "store"
    broker = _start_broker(sock, store)
    acked: set[int] = set()
    try:
        # No reconnect: the test decides when the broker is back, and republishes itself.
        opts = ConnectOptions(reconnect=False)
        async with asyncipc.connect(f"unix://{sock}", options=opts) as bus:
            stream = await bus.stream("DUR", subjects=["durable.>"], fsync="always")
            first = await _publish_all(stream, acked, 0, KILL_AFTER)
            # Keep publishing while the broker is killed under us.
            killer = asyncio.get_running_loop().call_later(
                0.02, os.kill, broker.pid, signal.SIGKILL
            )
            resume = await _publish_all(stream, acked, first, None)
            killer.cancel()
        assert broker.wait(timeout=10) == -signal.SIGKILL
        assert resume < TOTAL, "the broker died after everything was published: kill sooner"
        assert len(acked) >= KILL_AFTER

        broker = _start_broker(sock, store)
        async with asyncipc.connect(f"unix://{sock}", options=opts) as bus:
            stream = await bus.stream("DUR")
            # Everything acknowledged before the kill is there, before anything else is sent.
            info = await stream.info()
            assert info.storage == "file"
            assert info.messages >= len(acked)
            # Republish from the first unacknowledged message, with the same ids.
            again: set[int] = set()
            end = await _publish_all(stream, again, resume, None)
            assert end == TOTAL
            consumer = await stream.consumer("check", ack_wait=30)
            seen: list[int] = []
            while len(seen) < TOTAL:
                got = await consumer.fetch(1000, timeout=5)
                assert got, f"the stream ran out after {len(seen)} messages"
                for msg in got:
                    seen.append(int(msg.data))
                    await msg.ack()
            assert await consumer.fetch(10, timeout=0.2) == []
    finally:
        if broker.poll() is None:
            broker.send_signal(signal.SIGTERM)
            broker.wait(timeout=10)

    assert seen == sorted(seen), "the stream is out of order"
    assert len(seen) == len(set(seen)) == TOTAL, "a message is missing or stored twice"
    assert acked <= set(seen)


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
async def test_power_cut_loses_no_acknowledged_message_under_fsync_always(
    tmp_path: Path, fsync: str
) -> None:
    """A storage layer that forgets every byte written after the last fsync (the power
    went): under "always" every acknowledged message survives; "interval" and "never"
    lose what the last fsync did not cover, and what survives is still a clean prefix."""
    from asyncipc.streams.store.fileio import PowerCutIO

    store = tmp_path / "store"
    io = PowerCutIO()
    broker = asyncipc.Broker(store=str(store))
    broker.streams.log_io = io
    listener = await broker.listen(f"unix://{tmp_path}/p.sock")
    acked: set[int] = set()
    opts = ConnectOptions(reconnect=False)
    bus = await asyncipc.connect(listener.url, options=opts)
    stream = await bus.stream("PWR", subjects=["pwr.>"], fsync=fsync, sync_interval=0.05)
    for start in range(0, 3000, WINDOW):
        batch = range(start, start + WINDOW)
        futures = [stream.publish_async("pwr.x", str(n).encode()) for n in batch]
        for n, ack in zip(batch, await asyncio.gather(*futures), strict=True):
            assert ack.seq > 0
            acked.add(n)
    io.power_cut()  # the machine is off: every byte not fsynced is gone
    await bus.close()
    await broker.close()  # its writes fail now (EIO); it must still shut down

    async with asyncipc.Broker(store=str(store)) as again:
        listener = await again.listen(f"unix://{tmp_path}/q.sock")
        async with asyncipc.connect(listener.url, options=opts) as bus:
            stream = await bus.stream("PWR")
            info = await stream.info()
            consumer = await stream.consumer("check", max_ack_pending=10_000)
            seen: list[int] = []
            while got := await consumer.fetch(1000, timeout=0.5):
                seen.extend(int(m.data) for m in got)
    assert seen == list(range(len(seen))), "what survives must be a prefix, in order, once"
    assert info.messages == len(seen)
    lost = len(acked - set(seen))
    print(f"fsync={fsync}: {len(acked)} acknowledged, {lost} lost to the power cut")
    if fsync == "always":
        assert lost == 0
