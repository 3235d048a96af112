"""The REST adapter's columns (issue 5): the Bus over ``http://`` (the WebSocket with the
``asyncipc.v1`` subprotocol, through an asyncipc broker) next to ``unix://``, and a bare
aiohttp WebSocket server as the reference for what aiohttp itself costs.

``asyncipc-http`` runs the same worker as ``asyncipc-unix`` (``workers/asyncipc_w.py``):
only the URL differs. ``aiohttp-ws`` is two processes fewer hops where the broker would
route: its server relays ``/pub`` to ``/sub`` sockets and echoes on ``/echo``
(``workers/aiohttp_server.py``), so a request/reply there is one round trip to a server
that answers itself, where asyncipc's goes requester -> broker -> responder and back.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from ._procs import Server, free_port, server, wait_for_tcp
from ._systems import STARTUP_TIMEOUT, Endpoints, Pattern, System

__all__ = ["REST_SYSTEMS", "AiohttpWs", "AsyncipcHttp"]


def _no_aiohttp() -> str | None:
    if importlib.util.find_spec("aiohttp") is None:
        return "no aiohttp (pip install aiohttp)"
    return None


class AsyncipcHttp(System):
    """An asyncipc broker listening on http://; clients connect("http://...")."""

    name = "asyncipc-http"
    worker = "asyncipc_w"

    def unavailable(self) -> str | None:
        return _no_aiohttp()

    @contextlib.asynccontextmanager
    async def serve(self, tmp: Path, pattern: Pattern) -> AsyncIterator[Endpoints]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"

        async def ready(s: Server) -> None:
            await wait_for_tcp("127.0.0.1", port, STARTUP_TIMEOUT, s.proc, s.log)

        argv = [sys.executable, "-m", "benchmarks.workers.asyncipc_broker", url]
        async with server("broker", argv, tmp, ready):
            yield Endpoints(url, url)


class AiohttpWs(System):
    """The reference: aiohttp's WebSocket server and client, nothing else."""

    name = "aiohttp-ws"
    worker = "aiohttp_w"

    def unavailable(self) -> str | None:
        return _no_aiohttp()

    @contextlib.asynccontextmanager
    async def serve(self, tmp: Path, pattern: Pattern) -> AsyncIterator[Endpoints]:
        port = free_port()

        async def ready(s: Server) -> None:
            await wait_for_tcp("127.0.0.1", port, STARTUP_TIMEOUT, s.proc, s.log)

        argv = [sys.executable, "-m", "benchmarks.workers.aiohttp_server", str(port)]
        async with server("aiohttp-server", argv, tmp, ready):
            url = f"ws://127.0.0.1:{port}"
            yield Endpoints(url, url)


REST_SYSTEMS: dict[str, System] = {s.name: s for s in (AsyncipcHttp(), AiohttpWs())}
