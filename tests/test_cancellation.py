"""Cancellation is honest: a cancelled await raises ``CancelledError`` to its caller.

The moments that matter are held open with gates (as ``test_broker_lifecycle`` does with
listen): a real WebSocket whose ``close()`` waits for the test. Nothing here depends on
how long anything takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
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
