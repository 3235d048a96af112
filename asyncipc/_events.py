"""Connection events: what a :class:`~asyncipc.Bus` tells about its link, to any number of
readers, none of which can hold the bus back.

``bus.events()`` hands each reader a queue of its own, bounded: a reader that stops
reading loses the oldest events (and is told how many), never blocks the bus. After the
``"closed"`` event a reader's iteration ends. ``docs/guide.md``, "When the broker goes
away", is the user's view.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Literal

__all__ = ["EVENT_BACKLOG", "ConnectionEvent", "EventHub", "EventStream"]

EVENT_BACKLOG = 256
"""Events one reader may leave unread before the oldest are dropped."""

EventKind = Literal["disconnected", "reconnected", "closed", "error"]


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """Something that happened to a bus's connection.

    ``kind``: ``"disconnected"`` (the link dropped; the bus reconnects), ``"reconnected"``
    (a new link is up and every subscription was sent on it again, ahead of anything
    published after; ``await bus.flush()`` returns once the broker has them all; ``url``
    says where), ``"error"`` (an attempt
    failed for a reason other than nobody listening, such as a refused token; the bus goes
    on trying), ``"closed"`` (for good: :meth:`Bus.close` ran or reconnecting gave up,
    ``error`` says why in the second case). ``url``: the broker concerned. ``error``: the
    exception behind it, or ``None``.
    """

    kind: EventKind
    url: str
    error: BaseException | None = None


class EventStream:
    """One reader's view of a bus's events: ``async for event in bus.events()``.

    Also an async context manager; leaving it (or :meth:`aclose`) stops the delivery to
    this reader. Iteration ends after the ``"closed"`` event.
    """

    __slots__ = ("__weakref__", "_done", "_hub", "_queue", "_waiter", "dropped")

    def __init__(self, hub: EventHub, backlog: int) -> None:
        self._hub = hub
        self._queue: deque[ConnectionEvent] = deque(maxlen=backlog)
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self.dropped = 0
        """Events this reader lost because it had ``EVENT_BACKLOG`` unread."""

    def _push(self, event: ConnectionEvent) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the deque drops the oldest itself
        self._queue.append(event)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ConnectionEvent:
        while not self._queue:
            if self._done:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        event = self._queue.popleft()
        if event.kind == "closed":
            self._done = True
            self._queue.clear()
        return event

    async def aclose(self) -> None:
        """Stop receiving events."""
        self._done = True
        self._queue.clear()
        self._hub.forget(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class EventHub:
    """Fans each event out to every live reader. A reader nobody holds any more is
    forgotten with it (weak references), so an abandoned ``events()`` costs nothing."""

    __slots__ = ("_closed", "_readers")

    def __init__(self) -> None:
        self._readers: weakref.WeakSet[EventStream] = weakref.WeakSet()
        self._closed: ConnectionEvent | None = None

    def stream(self, backlog: int = EVENT_BACKLOG) -> EventStream:
        """A new reader; after the bus closed, one that yields ``"closed"`` and ends."""
        reader = EventStream(self, backlog)
        if self._closed is not None:
            reader._push(self._closed)
        else:
            self._readers.add(reader)
        return reader

    def emit(self, event: ConnectionEvent) -> None:
        """Give ``event`` to every reader; ``"closed"`` is the last one."""
        if self._closed is not None:
            return
        if event.kind == "closed":
            self._closed = event
        for reader in list(self._readers):
            reader._push(event)
        if event.kind == "closed":
            self._readers.clear()

    def forget(self, reader: EventStream) -> None:
        """``reader`` stopped reading."""
        self._readers.discard(reader)
