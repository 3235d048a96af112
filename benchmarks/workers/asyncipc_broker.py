"""The asyncipc broker process: ``asyncipc.Broker`` listening on the given URLs.

``python -m benchmarks.workers.asyncipc_broker [--store DIR] URL [URL ...]``. Written
against the library's API rather than the ``asyncipc`` command, so that the benchmark
measures the broker itself and does not depend on the command line's flags. It runs on
uvloop, as the client workers do and as DESIGN.md asks of the broker. SIGTERM or SIGINT
closes it. ``--store DIR`` keeps streams on disk there (``Broker(store=DIR)``); without it
they live in memory.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

import asyncipc


async def serve(urls: list[str], store: str | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    options = {"store": store} if store is not None else {}
    async with asyncipc.Broker(**options) as broker:  # leaving it closes the broker
        for url in urls:
            await broker.listen(url)
        print("ready", *broker.urls, flush=True)
        await stop.wait()


def main(argv: list[str]) -> None:
    store = None
    if argv[:1] == ["--store"] and len(argv) > 1:
        store, argv = argv[1], argv[2:]
    if not argv:
        raise SystemExit(
            "usage: python -m benchmarks.workers.asyncipc_broker [--store DIR] URL [URL ...]"
        )
    uvloop.run(serve(argv, store))


if __name__ == "__main__":
    main(sys.argv[1:])
