"""A broker process for the exhaustion tests: ``python tests/limits_broker.py OPTIONS URL...``.

``OPTIONS`` is a JSON object of :class:`~asyncipc.BrokerOptions` fields. The environment
may set ``LIMITS_LOOP=uvloop`` (the event loop the ``asyncipc broker`` command uses when
uvloop is installed) and ``LIMITS_NOFILE=N`` (RLIMIT_NOFILE, applied here, in the child).
Prints ``ready URL`` per listener, then serves until SIGTERM; logs go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import sys

import asyncipc


async def main(options: dict[str, object], urls: list[str]) -> None:
    broker = asyncipc.Broker(**options)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(broker.close()))
    for url in urls:
        listener = await broker.listen(url)
        print("ready", listener.url, flush=True)
    await broker.serve_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    nofile = os.environ.get("LIMITS_NOFILE")
    if nofile:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(nofile), hard))
    run = asyncio.run
    if os.environ.get("LIMITS_LOOP") == "uvloop":
        import uvloop

        run = uvloop.run  # type: ignore[assignment]
    run(main(json.loads(sys.argv[1]), sys.argv[2:]))
