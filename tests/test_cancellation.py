"""Cancellation is honest: a cancelled await raises ``CancelledError`` to its caller, and
clean-up that promises something (``close()``) keeps the promise before raising it.

The moments that matter are held open with gates (as ``test_broker_lifecycle`` does with
listen): a real WebSocket whose ``close()`` waits for the test, a handler that waits for
the test before it answers. Nothing here depends on how long anything takes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import pytest

import asyncipc
from asyncipc.adapters.rest._ws import SUBPROTOCOL, WebSocketLink
from asyncipc.link import PeerInfo
from asyncipc.transports import TransportOptions

# --- the REST adapter's WebSocket link ---------------------------------------------------


@pytest.fixture
async def rest() -> AsyncIterator[tuple[asyncipc.Broker, str]]:
    async with asyncipc.Broker() as broker:
        listener = await broker.listen("http://127.0.0.1:0")
        yield broker, listener.url


class GatedClose:
    """A real aiohttp client WebSocket whose ``close()`` waits until the test opens the
    gate: the link's writer is then still finishing while its reader is done."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def receive(self) -> aiohttp.WSMessage:
        return await self.ws.receive()

    async def close(self, **kwargs: Any) -> bool:
        self.entered.set()
        await self.gate.wait()
        return await self.ws.close(**kwargs)


async def ws_link(session: aiohttp.ClientSession, url: str, gated: bool = False) -> Any:
    """The client's end of ``GET /v1/ws``, as ``HttpTransport.connect`` builds it."""
    ws = await session.ws_connect(url + "/v1/ws", protocols=(SUBPROTOCOL,))
    assert ws.protocol == SUBPROTOCOL
    sock: Any = GatedClose(ws) if gated else ws
    link = WebSocketLink(
        sock,
        TransportOptions(),
        server_side=False,
        peer=PeerInfo("http", url),
        abort_transport=None,
    )
    return link, sock


async def test_cancelling_wait_closed_raises(rest: tuple[asyncipc.Broker, str]) -> None:
    """wait_closed() waits for the reader to release the connection; cancelled there, it
    raises CancelledError (it once swallowed it and returned as if closed)."""
    _, url = rest
    async with aiohttp.ClientSession() as session:
        link, _ = await ws_link(session, url)
        releasing, release = asyncio.Event(), asyncio.Event()

        async def then() -> None:  # what HttpTransport passes: session.close
            releasing.set()
            await release.wait()

        link.run_in_task(then)
        link.close()
        await releasing.wait()  # closed; the reader is still releasing the connection
        waiter = asyncio.ensure_future(link.wait_closed())
        for _ in range(3):
            await asyncio.sleep(0)
        assert not waiter.done()  # it waits for the reader
        waiter.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await link.wait_closed()  # the reader still ended: the link owns it
        assert link.closed


async def test_cancelling_run_while_the_writer_finishes_raises(
    rest: tuple[asyncipc.Broker, str],
) -> None:
    """run() waits for the writer to finish our close handshake; cancelled there, it
    raises CancelledError and the writer is cancelled with it (run() once swallowed the
    cancellation and returned normally once the writer was done)."""
    broker, url = rest
    async with aiohttp.ClientSession() as session:
        link, sock = await ws_link(session, url, gated=True)
        running = asyncio.ensure_future(link.run())
        link.close()
        await sock.entered.wait()  # the writer is in close(), held by the gate
        # The broker closes its end: our reader gets the CLOSE and ends; run() now waits
        # for the writer alone.
        await broker.close()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not running.done()
        running.cancel()
        sock.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await running
        await link.wait_closed()  # and the link is closed all the same
        assert link.closed


# --- close() keeps its promise when cancelled ---------------------------------------------


class SlowService:
    """A service whose handler waits for the test before it answers."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, msg: asyncipc.Message) -> bytes:
        self.entered.set()
        await self.release.wait()
        return b"done"


async def test_a_cancelled_broker_close_still_drains(tmp_path: Path) -> None:
    """Broker.close() cancelled while it waits for a request in flight: the reply still
    reaches the requester, every client is disconnected, the socket file is gone, and
    then the cancellation is raised."""
    path = tmp_path / "b.sock"
    broker = asyncipc.Broker(drain_timeout=30)
    listener = await broker.listen(f"unix://{path}")
    # reconnect=False: "every client is disconnected" is seen as the buses ending.
    once = asyncipc.ConnectOptions(reconnect=False)
    service, client = SlowService(), await asyncipc.connect(listener.url, options=once)
    bus = await asyncipc.connect(listener.url, options=once)
    try:
        bus.serve("slow", service.handle)
        await bus.flush()
        asking = asyncio.ensure_future(client.request("slow", timeout=30))
        await service.entered.wait()
        closing = asyncio.ensure_future(broker.close())
        # It has stopped listening once the file is gone; then it waits for the reply.
        while path.exists():  # noqa: ASYNC110 - a file going away has no event to await
            await asyncio.sleep(0.01)
        closing.cancel()
        service.release.set()
        assert (await asking).data == b"done"
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert broker.sessions == 0
        await broker.serve_forever()  # returns: the broker is closed
        await client.wait_closed()
        await bus.wait_closed()
    finally:
        await client.close()
        await bus.close()
        async with asyncio.timeout(30):  # a guard: a close() cut short never ends
            await broker.close()


async def test_close_in_a_cancelled_anyio_scope_still_drains(tmp_path: Path) -> None:
    """An anyio cancel scope re-delivers its cancellation at every await; close() holds
    it off until it is done, and it lands at the caller's next await."""
    broker = asyncipc.Broker(drain_timeout=30)
    url = f"memory://c{os.urandom(4).hex()}"
    await broker.listen(url)
    service, client = SlowService(), await asyncipc.connect(url)
    bus = await asyncipc.connect(url)
    steps: list[str] = []
    scopes: list[anyio.CancelScope] = []

    async def close_in_scope() -> bool:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await broker.close()
            steps.append("closed")
            await anyio.lowlevel.checkpoint()
            steps.append("not cancelled")  # not reached: the scope was cancelled
        return scope.cancelled_caught

    try:
        bus.serve("slow", service.handle)
        await bus.flush()
        asking = asyncio.ensure_future(client.request("slow", timeout=30))
        await service.entered.wait()
        closing = asyncio.ensure_future(close_in_scope())
        for _ in range(3):  # close() has started, and waits for the reply
            await asyncio.sleep(0)
        scopes[0].cancel()
        for _ in range(3):
            await asyncio.sleep(0)
        service.release.set()
        assert (await asking).data == b"done"
        assert await closing is True
        assert steps == ["closed"]
        assert broker.sessions == 0
    finally:
        await client.close()
        await bus.close()
        async with asyncio.timeout(30):  # a guard: a close() cut short never ends
            await broker.close()


async def test_a_cancelled_bus_close_lets_its_handler_answer() -> None:
    """Bus.close() cancelled while its handler holds a request: the handler still
    answers, the bus still closes, then the cancellation is raised."""
    url = f"memory://c{os.urandom(4).hex()}"
    async with asyncipc.Broker() as broker:
        await broker.listen(url)
        service = SlowService()
        async with asyncipc.connect(url) as client:
            bus = await asyncipc.connect(url)
            bus.serve("slow", service.handle)
            await bus.flush()
            asking = asyncio.ensure_future(client.request("slow", timeout=10))
            await service.entered.wait()
            closing = asyncio.ensure_future(bus.close())
            for _ in range(3):
                await asyncio.sleep(0)
            closing.cancel()
            service.release.set()
            assert (await asking).data == b"done"
            with pytest.raises(asyncio.CancelledError):
                await closing
            assert bus.is_closed
            await bus.wait_closed()


async def test_a_callback_may_close_its_own_bus() -> None:
    """close() from a callback of the same bus: the drain does not wait for the caller
    (which is waiting for close()), so it ends at once rather than at drain_timeout."""
    url = f"memory://c{os.urandom(4).hex()}"
    async with asyncipc.Broker() as broker:
        await broker.listen(url)
        bus = await asyncipc.connect(url, options=asyncipc.ConnectOptions(drain_timeout=60))
        closed = asyncio.Event()

        async def close_from_here(msg: asyncipc.Message) -> None:
            await bus.close()
            closed.set()

        bus.subscribe("stop", callback=close_from_here)
        await bus.publish("stop")
        # A guard against a hang, far below drain_timeout; not a measure of speed.
        async with asyncio.timeout(20):
            await closed.wait()
        assert bus.is_closed


# --- request/reply: cancelled at every await, never a reply to the wrong request ----------


class CancelAt:
    """Awaits ``coro`` and counts the times it suspends (each await that really waits:
    for the reply, for the link to drain under backpressure, for a reconnect...). At
    suspension number ``at`` it cancels the task it runs in, just before suspending, so
    the cancellation lands exactly at that await: ``Task.cancel()`` on the running task
    cancels the future it is about to wait on, as a cancellation from outside would."""

    def __init__(self, coro: Any, at: int) -> None:
        self.coro = coro
        self.at = at
        self.suspensions = 0

    def __await__(self) -> Any:
        it = self.coro.__await__()
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                waited_on = it.throw(error) if error is not None else it.send(value)
            except StopIteration as done:
                return done.value
            self.suspensions += 1
            if self.suspensions == self.at:
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
            try:
                value, error = (yield waited_on), None
            except BaseException as exc:  # handed on to the coroutine, as a Task would
                value, error = None, exc


async def _echo(msg: asyncipc.Message) -> bytes:
    # A little delay, varied, so that replies overtake one another and a cancelled
    # request's reply arrives while other requests of the same inbox are waiting.
    await asyncio.sleep((msg.data[-1] % 3) / 1000)
    return b"re:" + msg.data


@pytest.mark.parametrize("pressure", ["plain", "backpressure"])
async def test_a_request_cancelled_at_each_await_never_gets_or_gives_a_wrong_reply(
    tmp_path: Path, pressure: str
) -> None:
    """Over a real unix broker, many requests share one bus (one inbox); one of them is
    cancelled at its 1st, 2nd, ... suspension until it finishes before the point is
    reached. Every other request gets exactly the reply to its own payload, the cancelled
    one raises CancelledError (or, when it finished first, has its own reply), and the
    bus keeps no state for any of them afterwards. Under ``backpressure`` the bus's
    high-water mark is below one payload, so every publish also waits for the link."""
    size, high_water = (16, 1 << 20) if pressure == "plain" else (64 * 1024, 1024)
    async with asyncipc.Broker() as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        async with (
            asyncipc.connect(url) as service,
            asyncipc.connect(url, options=asyncipc.ConnectOptions(high_water=high_water)) as bus,
        ):
            service.serve("echo", _echo)
            await service.flush()
            serial = 0

            async def ask(tag: str) -> tuple[bytes, bytes]:
                nonlocal serial
                serial += 1
                payload = f"{tag}:{serial}:".encode().ljust(size, b".") + bytes([serial % 251])
                reply = await bus.request("echo", payload, timeout=10)
                return payload, reply.data

            at = 0
            finished_before = 0
            points = []
            while finished_before < 3 and at < 200:
                at += 1
                others = [asyncio.create_task(ask("other")) for _ in range(8)]
                await asyncio.sleep(0)
                probe = CancelAt(ask("target"), at)

                async def run_target(probe: CancelAt = probe) -> tuple[bytes, bytes]:
                    result: tuple[bytes, bytes] = await probe
                    return result

                target = asyncio.create_task(run_target())
                others += [asyncio.create_task(ask("other")) for _ in range(8)]
                for payload, data in await asyncio.gather(*others):
                    assert data == b"re:" + payload, "a reply went to the wrong request"
                try:
                    payload, data = await target
                except asyncio.CancelledError:
                    assert probe.suspensions >= at
                    points.append(at)
                else:
                    assert data == b"re:" + payload
                    assert probe.suspensions < at, "cancelled yet it returned"
                    finished_before += 1
                # No request left behind: the inbox's table is empty between rounds.
                assert not bus._requests, bus._requests
            # Late replies to cancelled requests have come and gone without harm.
            payload, data = await ask("last")
            assert data == b"re:" + payload
            await asyncio.sleep(0.01)
            assert not bus._requests
            # Nor at the broker: every request it saw in flight has had its reply.
            for _ in range(200):
                if not len(broker._inflight):
                    break
                await asyncio.sleep(0.01)
            assert not len(broker._inflight)
    print(
        f"\n{pressure}: cancelled at await points {points}; "
        f"then {finished_before} rounds finished before the point"
    )
    assert points, "no await point was exercised"
    assert points == list(range(1, len(points) + 1)), "each point in turn"


async def test_a_request_cancelled_after_each_loop_turn_never_misroutes(tmp_path: Path) -> None:
    """The same from outside: the requester's caller cancels it after 0, 1, 2, ... turns
    of the event loop, so the cancellation also lands between the reply's arrival and the
    request's resumption (its future already done). Until a round finishes first."""
    async with asyncipc.Broker() as broker:
        url = (await broker.listen(f"unix://{tmp_path}/b.sock")).url
        async with asyncipc.connect(url) as service, asyncipc.connect(url) as bus:

            async def echo_now(msg: asyncipc.Message) -> bytes:
                return b"re:" + msg.data  # no delay: a round trip takes a few loop turns

            service.serve("echo", echo_now)
            await service.flush()
            cancelled = completed = 0
            turns = 0
            while completed < 3 and turns < 500:
                others = [
                    asyncio.create_task(bus.request("echo", b"o%d" % (turns * 100 + i)))
                    for i in range(6)
                ]
                target = asyncio.create_task(bus.request("echo", b"t%d" % turns, timeout=10))
                for _ in range(turns):
                    await asyncio.sleep(0)
                target.cancel()
                replies = await asyncio.gather(*others)
                for i, reply in enumerate(replies):
                    assert reply.data == b"re:o%d" % (turns * 100 + i)
                try:
                    reply = await target
                except asyncio.CancelledError:
                    cancelled += 1
                else:
                    assert reply.data == b"re:t%d" % turns
                    completed += 1
                assert not bus._requests
                turns += 1
    print(f"\ncancelled after 0..{turns - 1} loop turns: {cancelled} cancelled, {completed} done")
    assert cancelled > 0
