"""What the example services share: the broker URL option, a tally, a stop signal.

The messages themselves are in ``models.py``: asyncipc encodes and decodes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncipc


def default_url() -> str:
    """``$ASYNCIPC_URL``, else where the ``asyncipc`` command looks for a broker."""
    return os.environ.get("ASYNCIPC_URL") or asyncipc.default_socket_url()


def add_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=default_url(),
        help="broker to connect to (default: $ASYNCIPC_URL, else %(default)s); "
        "memory:// runs an embedded broker in this process",
    )


@dataclass
class Tally:
    """How many messages a service handled. ``stop`` is set when ``limit`` is reached
    (``--count``); a service's ``main`` also sets it on SIGINT/SIGTERM."""

    limit: int | None = None
    count: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self) -> None:
        self.count += 1
        if self.limit is not None and self.count >= self.limit:
            self.stop.set()


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT (Ctrl-C) or SIGTERM instead of dying mid-message: the
    service then leaves its ``async with asyncipc.connect()``, which drains."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


@contextlib.contextmanager
def exit_on_errors() -> Iterator[None]:
    """Turn an asyncipc error (no broker at the URL, no pricing service...) into one line
    on stderr and exit status 1, and Ctrl-C into status 130, rather than a traceback."""
    try:
        yield
    except asyncipc.AsyncIPCError as exc:
        sys.exit(f"{os.path.basename(sys.argv[0])}: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)
