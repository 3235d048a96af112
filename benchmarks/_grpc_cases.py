"""The gRPC adapter's rows of the adapters section (``benchmarks/adapters.py``).

* ``grpc:// Connect``: the asyncipc Bus over a ``Connect`` stream, every client
  (publisher, subscriber, requester, responder) on ``grpc://``: the same worker code as the
  ``unix://`` row, only the URL differs.
* ``grpc unary Request``: a plain grpc.aio stub calling ``asyncipc.v1.Bus/Request``, as a
  client in another language would, answered by a responder on ``unix://``.
* ``grpc.aio bare``, the reference: a relay written directly on grpc.aio in this process
  (``bench.Relay``: client-streaming ``Publish`` into bounded queues, server-streaming
  ``Subscribe`` out of them, unary ``Echo``), raw bytes and one gRPC message per message,
  with plain grpc.aio clients (``workers/grpc_w.py``). It is what grpc.aio itself costs for
  the two patterns, with nothing of asyncipc on the path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from .adapters import Endpoints, Row, Side, asyncipc_broker

__all__ = ["ROWS", "bare_relay"]

QUEUE = 1024  # messages a subscriber's queue holds before the publisher's stream waits


class _Relay:
    def __init__(self) -> None:
        self.queues: list[asyncio.Queue[bytes]] = []

    async def publish(self, requests: Any, context: Any) -> bytes:
        async for data in requests:
            for queue in self.queues:
                await queue.put(data)  # a full queue stops reading: HTTP/2 pushes back
        return b""

    async def subscribe(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE)
        self.queues.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self.queues.remove(queue)

    async def echo(self, request: bytes, context: Any) -> bytes:
        return request


@contextlib.asynccontextmanager
async def bare_relay(tmp: Path) -> AsyncIterator[Endpoints]:
    """The reference server: grpc.aio and nothing else, on a free loopback port."""
    relay = _Relay()
    handlers = {
        "Publish": grpc.stream_unary_rpc_method_handler(relay.publish),
        "Subscribe": grpc.unary_stream_rpc_method_handler(relay.subscribe),
        "Echo": grpc.unary_unary_rpc_method_handler(relay.echo),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Relay", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield {"grpc": f"grpc://127.0.0.1:{port}"}
    finally:
        await server.stop(None)


ROWS = [
    Row(
        "grpc-connect",
        "grpc:// Connect (asyncipc Bus)",
        lambda tmp: asyncipc_broker(tmp, "grpc://127.0.0.1:0"),
        pub=Side("asyncipc_w", "pub", "grpc"),
        sub=Side("asyncipc_w", "sub", "grpc"),
        responder=Side("asyncipc_w", "responder", "grpc"),
        requester=Side("asyncipc_w", "requester", "grpc"),
    ),
    Row(
        "grpc-unary",
        "grpc unary Request (grpcio stub; responder on unix://)",
        lambda tmp: asyncipc_broker(tmp, "grpc://127.0.0.1:0"),
        responder=Side("asyncipc_w", "responder", "unix"),
        requester=Side("grpc_w", "unary-requester", "grpc"),
    ),
    Row(
        "grpc-bare",
        "grpc.aio bare relay/echo",
        bare_relay,
        pub=Side("grpc_w", "bare-pub", "grpc"),
        sub=Side("grpc_w", "bare-sub", "grpc"),
        requester=Side("grpc_w", "bare-requester", "grpc"),
        reference=True,
    ),
]
