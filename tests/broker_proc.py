"""A broker in its own process for the tests: ``python tests/broker_proc.py URL [URL ...]``.

Prints ``ready URL`` per listener, then serves until SIGTERM/SIGINT and drains. Kept apart
from the CLI so that the conformance suite does not depend on it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncipc


async def main(urls: list[str]) -> None:
    token = os.environ.get("ASYNCIPC_TEST_TOKEN") or None
    broker = asyncipc.Broker(token=token)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(broker.close()))
    for url in urls:
        listener = await broker.listen(url)
        print("ready", listener.url, flush=True)
    await broker.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
