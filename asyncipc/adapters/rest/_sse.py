"""Server-Sent Events for ``GET /v1/subscribe/{subject}`` (docs/rest.md).

The stream is written from an ordinary :class:`~asyncipc.Subscription`: when the reader's
socket is full, ``write`` waits, the subscription's queue fills, and its overflow policy
decides, as for any slow subscriber.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiohttp import web

from ...errors import ConnectionClosed, SlowConsumer
from ...subscription import Subscription
from ._envelope import error_body, message_json

__all__ = ["HEARTBEAT", "sse_event", "stream_events"]

HEARTBEAT = 15.0
"""Seconds of silence after which an event stream gets a comment line, so that proxies
keep it open and a reader that went away is noticed."""


def sse_event(data: dict[str, Any], event: str | None = None, ident: int | None = None) -> bytes:
    """One Server-Sent Event: optional ``id:`` and ``event:`` lines, one ``data:`` line."""
    head = ""
    if ident is not None:
        head += f"id: {ident}\n"
    if event is not None:
        head += f"event: {event}\n"
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def stream_events(response: web.StreamResponse, sub: Subscription, count: int) -> None:
    """Write ``sub``'s messages as events until it ends, ``count`` are sent, or the
    reader goes away. Several queued messages go out in one write. The ``subscribed``
    event says the bounds in effect (the caller's, capped by the broker's)."""
    await response.write(
        sse_event(
            {
                "subject": sub.subject,
                "queue": sub.queue,
                "max_pending": sub.max_pending,
                "max_bytes": sub.max_bytes,
            },
            event="subscribed",
        )
    )
    sent = 0
    try:
        while not count or sent < count:
            try:
                msg = await sub.next_msg(timeout=HEARTBEAT)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            sent += 1
            chunk = [sse_event(message_json(msg), ident=sent)]
            while sub.pending and len(chunk) < 64 and (not count or sent < count):
                sent += 1
                chunk.append(sse_event(message_json(await sub.next_msg()), ident=sent))
            # Waits while the socket is full: the subscription's queue fills meanwhile,
            # and its overflow policy decides, as for any slow subscriber.
            await response.write(b"".join(chunk))
    except SlowConsumer as exc:
        await response.write(sse_event(error_body("slow_consumer", str(exc)), event="error"))
    except ConnectionClosed as exc:
        if sub.active:
            raise
        await response.write(sse_event(error_body("unavailable", str(exc)), event="error"))
    except ConnectionResetError:
        return  # the reader went away
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
