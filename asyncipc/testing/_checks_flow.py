"""Conformance checks: flow and lifetimes (the overflow policies, backpressure, close,
unsubscribe and drain)."""

from __future__ import annotations

import asyncio

import pytest

from .._connect import connect
from ..errors import ClosedError, NoResponders, SlowConsumer
from ..message import Message
from ._registry import ConformanceCheck, TransportTraits, drain, registrar

FLOW: dict[str, ConformanceCheck] = {}
"""These checks by name, in the order they are defined."""
check = registrar(FLOW)


@check(
    ("drop_new", {"overflow": "drop_new", "kept": range(10)}),
    ("drop_oldest", {"overflow": "drop_oldest", "kept": range(90, 100)}),
)
async def _drop_policies(url: str, p: str, t: TransportTraits, overflow: str, kept: range) -> None:
    """A full subscription keeps the first (drop_new) or the last (drop_oldest) messages."""
    async with (
        connect(url) as pub,
        connect(url) as subbus,
        subbus.subscribe(f"{p}.d", max_pending=10, overflow=overflow) as sub,
    ):
        for i in range(100):
            await pub.publish(f"{p}.d", str(i).encode())
        await pub.flush()
        await subbus.flush()
        assert sub.dropped == 90
        assert [int(m.data) for m in drain(sub)] == list(kept)


@check()
async def _error_policy_yields_what_it_has_then_raises(
    url: str, p: str, t: TransportTraits
) -> None:
    """overflow="error": the messages held are read, then SlowConsumer."""
    async with connect(url) as bus:
        sub = bus.subscribe(f"{p}.e", max_pending=5, overflow="error")
        await bus.flush()
        for i in range(20):
            await bus.publish(f"{p}.e", str(i).encode())
        await bus.flush()
        got = [int((await sub.next_msg(timeout=5)).data) for _ in range(5)]
        assert got == [0, 1, 2, 3, 4]
        with pytest.raises(SlowConsumer, match="fell behind"):
            await sub.next_msg(timeout=5)
        assert not sub.active


@check()
async def _block_policy_slows_the_publisher_and_loses_nothing(
    url: str, p: str, t: TransportTraits
) -> None:
    """A subscriber that stops reading holds the publisher back (through the broker), and
    once it reads again every message arrives, in order."""
    if not t.holds_back_publishers:
        pytest.skip(t.why or "this transport does not hold a publisher back")
    # 62 MiB: far more than every buffer on the way together. 25 MiB was not, once, over
    # TCP loopback, whose autotuned socket buffers reach several MiB on each of four ends.
    n, size = 1000, 64 * 1024
    if t.max_payload is not None and t.max_payload < size:
        # One datagram each over udp (docs/transports.md, UDP): 60 KiB, still 58 MiB.
        size = (t.max_payload - 4096) // 1024 * 1024
    async with connect(url) as pub, connect(url) as subbus:
        sub = subbus.subscribe(f"{p}.b", max_pending=8)
        await subbus.flush()
        progress = 0

        async def produce() -> None:
            nonlocal progress
            for i in range(n):
                await pub.publish(f"{p}.b", i.to_bytes(4, "big") * (size // 4))
                progress = i + 1

        task = asyncio.create_task(produce())
        try:
            # Let it run until it stalls: until ten turns of 20 ms in a row (0.2 s) saw
            # no publish return, the others of this loop running meanwhile, or 1 s at most.
            still, seen = 0, -1
            for _ in range(50):
                await asyncio.sleep(0.02)
                still, seen = (still + 1 if progress == seen else 0), progress
                if still == 10 or task.done():
                    break
            assert not task.done(), "the publisher should be held back by the stalled subscriber"
            assert progress < n
            got = []
            async for msg in sub:
                got.append(int.from_bytes(msg.data[:4], "big"))
                if len(got) == n:
                    break
            await task
        finally:
            task.cancel()
        assert got == list(range(n))


@check()
async def _close_drains_what_was_published(url: str, p: str, t: TransportTraits) -> None:
    """close() returns once the broker has every message published before it."""
    async with connect(url) as subbus, subbus.subscribe(f"{p}.drain") as sub:
        pub = await connect(url)
        for i in range(500):
            await pub.publish(f"{p}.drain", str(i).encode())
        await pub.close()  # returns only once the broker has everything
        got = [int((await sub.next_msg(timeout=5)).data) for _ in range(500)]
        assert got == list(range(500))
        with pytest.raises(ClosedError):
            await pub.publish(f"{p}.drain", b"late")


@check()
async def _close_lets_handlers_finish(url: str, p: str, t: TransportTraits) -> None:
    """close() waits for a handler in progress, whose reply reaches the requester."""
    started = asyncio.Event()
    release = asyncio.Event()
    async with connect(url) as client:
        server = await connect(url)

        @server.handler(f"{p}.slow")
        async def slow(msg: Message) -> bytes:
            started.set()
            await release.wait()
            return b"done"

        await server.flush()
        pending = asyncio.create_task(client.request(f"{p}.slow", b"", timeout=10))
        await started.wait()
        closing = asyncio.create_task(server.close())
        await asyncio.sleep(0.05)
        release.set()
        await closing
        assert (await pending).data == b"done"


@check()
async def _reconnect_after_close_and_subscriptions_go_with_the_bus(
    url: str, p: str, t: TransportTraits
) -> None:
    """A closed bus's handlers are gone; a new connection serves again."""
    bus = await connect(url)

    @bus.handler(f"{p}.svc")
    async def svc(msg: Message) -> bytes:
        return b"one"

    await bus.flush()
    await bus.close()
    async with connect(url) as again:
        with pytest.raises(NoResponders):
            await again.request(f"{p}.svc", b"", timeout=5)

        @again.handler(f"{p}.svc")
        async def svc2(msg: Message) -> bytes:
            return b"two"

        await again.flush()
        assert (await again.request(f"{p}.svc", b"", timeout=5)).data == b"two"


@check()
async def _unsubscribe_stops_delivery(url: str, p: str, t: TransportTraits) -> None:
    """Nothing published after unsubscribe() is delivered."""
    async with connect(url) as bus:
        sub = bus.subscribe(f"{p}.u")
        await bus.flush()
        await bus.publish(f"{p}.u", b"1")
        await bus.flush()
        await sub.unsubscribe()
        await bus.publish(f"{p}.u", b"2")
        await bus.flush()
        assert [m.data async for m in sub] == [b"1"]


@check()
async def _drain_leaves_a_queue_group_without_losing_a_message(
    url: str, p: str, t: TransportTraits
) -> None:
    """unsubscribe() drops what the broker already sent; drain() keeps it, so every
    message reaches exactly one member while one of them leaves mid-stream."""
    n = 2000
    async with connect(url) as pub, connect(url) as a, connect(url) as b:
        # A small bound on a: its link pauses, so messages wait in flight for it.
        sa = a.subscribe(f"{p}.work", queue="g", max_pending=10)
        sb = b.subscribe(f"{p}.work", queue="g")
        await a.flush()
        await b.flush()
        got_b: list[int] = []

        async def read_b() -> None:
            async for m in sb:
                got_b.append(int(m.data[:8]))

        async def publish() -> None:
            for i in range(n):
                # 4 KiB each: more than a socket buffer holds is in flight for a.
                await pub.publish(f"{p}.work", b"%08d" % i + bytes(4096))
            await pub.flush()

        reader = asyncio.create_task(read_b())
        publisher = asyncio.create_task(publish())
        try:
            got_a: list[int] = []
            async for m in sa:
                got_a.append(int(m.data[:8]))
                if len(got_a) == 50:
                    await sa.drain(timeout=10)  # iteration goes on with what was in flight
            await publisher
            await b.flush()  # b's PONG follows every message routed to it
            await sb.drain(timeout=10)
            await reader
        finally:
            reader.cancel()
            publisher.cancel()
    assert sorted(got_a + got_b) == list(range(n))
    assert len(got_a) >= 50


@check()
async def _serve_drain_answers_the_request_in_hand(url: str, p: str, t: TransportTraits) -> None:
    """A served subscription's drain() waits for the handler; then no responders."""
    async with connect(url) as service, connect(url) as client:
        started = asyncio.Event()
        release = asyncio.Event()

        async def slow(msg: Message) -> bytes:
            started.set()
            await release.wait()
            return b"done:" + msg.data

        sub = service.serve(f"{p}.slow", slow)
        await service.flush()
        request = asyncio.create_task(client.request(f"{p}.slow", b"x", timeout=10))
        await started.wait()
        draining = asyncio.create_task(sub.drain(timeout=10))
        await asyncio.sleep(0.05)
        assert not draining.done(), "drain() returned before the handler finished"
        release.set()
        await draining
        assert (await request).data == b"done:x"
        with pytest.raises(NoResponders):
            await client.request(f"{p}.slow", b"y", timeout=5)
