"""The reference for the REST adapter: aiohttp's WebSocket server with nothing on top.

``python -m benchmarks.workers.aiohttp_server PORT``. ``/sub`` sockets receive every
binary message sent on a ``/pub`` socket (a bare relay: what the adapter's pub/sub pays
aiohttp, without subjects, routing or flow control); ``/echo`` sends each message back
(a bare echo handler: what a request/reply round trip through aiohttp costs). uvloop, as
every other process of the run. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop
from aiohttp import WSMsgType, web


async def serve(port: int) -> None:
    subscribers: set[web.WebSocketResponse] = set()

    async def pub(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                for sub in list(subscribers):
                    await sub.send_bytes(msg.data)
        return ws

    async def sub(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        subscribers.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            subscribers.discard(ws)
        return ws

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/pub", pub)
    app.router.add_get("/sub", sub)
    app.router.add_get("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
