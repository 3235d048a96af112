"""What asyncipc works around in nats-py 2.x, in one place for the ``nats://`` adapter,
the JetStream streams and the bridge. Imports nothing from nats-py itself.

**A flush's PING can overtake the commands before it.** nats-py queues a command (a SUB,
a PUB) in its buffer and leaves the writing to its flusher task, but ``nc.flush()`` writes
its PING straight to the socket (``Client._send_ping``, 2.x up to 2.16 at least). Right
after ``nc.subscribe()``, which does not yield, the SUB is still in the buffer, so the
server reads the PING first and answers PONG before it has the subscription: a message
another client publishes once ``flush()`` has returned can miss it. Seen in a bridge
test on a loaded machine: the server's trace had the SUB arrive after the other
connection's PUB. :func:`flush` first waits for nats-py's own flusher to write the
buffer (``Client._flush_pending(force_flush=True)``, the path nats-py's ``publish``
takes when its buffer is full), then does the round trip.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["flush"]


async def flush(nc: Any, timeout: float = 10.0) -> None:
    """``nc.flush(timeout)``, returning only once the server has also seen every command
    queued before the call. Raises what ``nc.flush`` raises (``FlushTimeoutError`` also
    when the buffer is not written within ``timeout``)."""
    write = getattr(nc, "_flush_pending", None)
    if write is not None and nc.is_connected:
        try:
            async with asyncio.timeout(timeout):
                await write(force_flush=True)
        except TimeoutError:
            from nats.errors import FlushTimeoutError

            raise FlushTimeoutError from None
    await nc.flush(timeout=timeout)
