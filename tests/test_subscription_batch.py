"""``Subscription.next_batch``: bulk receive, with the same order, bounds and endings as
``async for``. In process (memory://) and across a Unix socket, where messages arrive
in separate reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import asyncipc


@pytest.fixture(params=["memory", "unix"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "memory":
        yield "memory://"
        return
    async with asyncipc.Broker() as broker:
        listener = await broker.listen(f"unix://{tmp_path}/b.sock")
        yield listener.url


async def test_batches_keep_order_and_respect_max(url: str) -> None:
    async with asyncipc.connect(url) as bus, bus.subscribe("b.x") as sub:
        for i in range(10):
            await bus.publish("b.x", str(i).encode())
        await bus.flush()
        sizes, got = [], []
        for _ in range(3):
            batch = await sub.next_batch(max_msgs=4, timeout=5)
            sizes.append(len(batch))
            got += [int(m.data) for m in batch]
        assert sizes == [4, 4, 2]
        assert got == list(range(10))
        assert sub.pending == 0
        assert sub.pending_bytes == 0


async def test_partial_take_counts_bytes(url: str) -> None:
    async with asyncipc.connect(url) as bus, bus.subscribe("b.x") as sub:
        for size in (1, 2, 3, 4):
            await bus.publish("b.x", bytes(size))
        await bus.flush()
        assert [len(m.data) for m in await sub.next_batch(max_msgs=3)] == [1, 2, 3]
        assert (sub.pending, sub.pending_bytes) == (1, 4)


async def test_waits_for_the_first_message_not_for_a_full_batch(url: str) -> None:
    async with asyncipc.connect(url) as bus, bus.subscribe("b.x") as sub:
        waiting = asyncio.create_task(sub.next_batch(max_msgs=100, timeout=5))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await bus.publish("b.x", b"one")
        batch = await waiting
        assert [m.data for m in batch] == [b"one"]


async def test_timeout_raises_and_leaves_the_subscription_usable(url: str) -> None:
    async with asyncipc.connect(url) as bus, bus.subscribe("b.x") as sub:
        with pytest.raises(TimeoutError):
            await sub.next_batch(timeout=0.05)
        await bus.publish("b.x", b"later")
        assert [m.data for m in await sub.next_batch(timeout=5)] == [b"later"]


async def test_ended_subscription_gives_what_is_queued_then_closed_error(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        sub = bus.subscribe("b.x")
        await bus.flush()
        for i in range(3):
            await bus.publish("b.x", str(i).encode())
        await bus.flush()
        await sub.unsubscribe()
        assert [m.data for m in await sub.next_batch()] == [b"0", b"1", b"2"]
        with pytest.raises(asyncipc.ClosedError, match="has ended"):
            await sub.next_batch(timeout=5)


async def test_a_waiting_batch_ends_when_the_subscription_does(url: str) -> None:
    async with asyncipc.connect(url) as bus, bus.subscribe("b.x") as sub:
        waiting = asyncio.create_task(sub.next_batch(timeout=5))
        await asyncio.sleep(0.01)
        await sub.unsubscribe()
        with pytest.raises(asyncipc.ClosedError):
            await waiting


async def test_drained_subscription_hands_over_everything_then_ends(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        sub = bus.subscribe("b.x", max_pending=2)
        await bus.flush()
        for i in range(5):
            await bus.publish("b.x", str(i).encode())
        got: list[int] = []

        async def take_all() -> None:
            while True:
                try:
                    batch = await sub.next_batch(timeout=5)
                except asyncipc.ClosedError:
                    return
                got.extend(int(m.data) for m in batch)

        taker = asyncio.create_task(take_all())
        await sub.drain(timeout=5)
        await asyncio.wait_for(taker, 5)
        assert got == list(range(5))


@pytest.mark.parametrize(
    ("overflow", "kept"), [("drop_new", range(10)), ("drop_oldest", range(90, 100))]
)
async def test_drop_policies_apply(url: str, overflow: str, kept: range) -> None:
    async with asyncipc.connect(url) as bus:
        sub = bus.subscribe("b.d", max_pending=10, overflow=overflow)
        await bus.flush()
        for i in range(100):
            await bus.publish("b.d", str(i).encode())
        await bus.flush()
        batch = await sub.next_batch(max_msgs=1000)
        assert [int(m.data) for m in batch] == list(kept)
        assert sub.dropped == 90


async def test_error_policy_gives_the_batch_then_raises(url: str) -> None:
    async with asyncipc.connect(url) as bus:
        sub = bus.subscribe("b.e", max_pending=5, overflow="error")
        await bus.flush()
        for i in range(20):
            await bus.publish("b.e", str(i).encode())
        await bus.flush()
        assert [int(m.data) for m in await sub.next_batch(timeout=5)] == [0, 1, 2, 3, 4]
        with pytest.raises(asyncipc.SlowConsumer, match="fell behind"):
            await sub.next_batch(timeout=5)


async def test_block_policy_bounds_batches_and_loses_nothing(url: str) -> None:
    count = 2000
    async with (
        asyncipc.connect(url) as pub,
        asyncipc.connect(url) as subbus,
        subbus.subscribe("b.b", max_pending=10) as sub,
    ):

        async def publish_all() -> None:
            for i in range(count):
                await pub.publish("b.b", i.to_bytes(4, "big"))

        publisher = asyncio.create_task(publish_all())
        got: list[int] = []
        while len(got) < count:
            batch = await sub.next_batch(max_msgs=1000, timeout=5)
            # In process the pause is immediate: max_pending, and the message that filled
            # it. A socket pauses after the read in hand, which may hold many frames.
            assert len(batch) <= (11 if url.startswith("memory") else count - 1)
            got += [int.from_bytes(m.data, "big") for m in batch]
        await publisher
        assert got == list(range(count))


async def test_max_msgs_must_be_positive() -> None:
    async with asyncipc.connect("memory://") as bus, bus.subscribe("b.x") as sub:
        with pytest.raises(ValueError, match="max_msgs must be at least 1, not 0"):
            await sub.next_batch(max_msgs=0)
