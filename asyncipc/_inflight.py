"""Requests the broker routed to a responder and has not seen answered yet.

Kept so that a broker shutting down (SIGTERM: ``asyncipc.signals``) can wait for the
replies of requests a service is in the middle of, instead of cutting the service off
and leaving its requester to time out. The broker knows a request only as a PUB with a
reply subject that matched a subscription, and its answer only as the first PUB on that
reply subject, so that is all this tracks: one dict entry per request, added and removed
on the hot path, never scanned there.

A request that carries its requester's time-out (the ``asyncipc-timeout`` header that
``Bus.request`` sends) is not waited for past it: nobody would read that answer. Other
entries whose answer never comes (the responder ignored it) go when their requester
disconnects, or when the table is full (oldest first). A shutdown therefore waits at
most the broker's ``drain_timeout`` for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["InFlight"]

S = TypeVar("S", bound=Hashable)  # the requester: the broker's session

MAX_TRACKED = 65536
"""Unanswered requests remembered at once; beyond, the oldest are forgotten."""


class InFlight(Generic[S]):
    """Reply subjects awaited, each with the session that asked."""

    __slots__ = ("_by_requester", "_expires", "_max", "_waiter", "replies")

    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self.replies: dict[str, S] = {}
        """Reply subject -> requester. The broker reads it directly on the hot path."""
        self._by_requester: dict[S, set[str]] = {}
        self._expires: dict[str, float] = {}  # reply -> when the requester gives up
        self._max = max_tracked
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self.replies)

    def add(self, reply: str, requester: S, waits: float | None = None) -> None:
        """A request with reply subject ``reply`` reached at least one responder;
        ``waits``: the seconds its requester waits for the answer (None: no limit)."""
        replies = self.replies
        if reply in replies:
            return
        if len(replies) >= self._max:
            self.answered(next(iter(replies)))
        replies[reply] = requester
        if waits is not None:
            # The monotonic clock, not the loop's: asyncio.get_running_loop() makes a
            # getpid() system call on Python 3.11, and this runs once per request.
            self._expires[reply] = time.monotonic() + waits
        mine = self._by_requester.get(requester)
        if mine is None:
            mine = self._by_requester[requester] = set()
        mine.add(reply)

    def answered(self, reply: str) -> None:
        """A PUB on ``reply`` arrived (or the request is given up)."""
        requester = self.replies.pop(reply, None)
        if requester is None:
            return
        if self._expires:
            self._expires.pop(reply, None)
        mine = self._by_requester.get(requester)
        if mine is not None:
            # An emptied set stays until its requester leaves (forget): a client asking
            # one request at a time would otherwise make and drop one per request.
            mine.discard(reply)
        self._wake()

    def forget(self, requester: S) -> None:
        """The requester left: nobody waits for those replies any more."""
        for reply in self._by_requester.pop(requester, ()):
            self.replies.pop(reply, None)
            self._expires.pop(reply, None)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if not self.replies and waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_empty(self) -> None:
        """Return once every tracked request is answered, forgotten or past its
        requester's time-out."""
        loop = asyncio.get_running_loop()
        while self.replies:
            now = time.monotonic()
            for reply in [r for r, t in self._expires.items() if t <= now]:
                self.answered(reply)
            if not self.replies:
                return
            horizon = None  # wake at the next expiry, if every entry has one
            if len(self._expires) == len(self.replies):
                horizon = min(self._expires.values()) - now
            waiter = self._waiter = loop.create_future()
            try:
                await asyncio.wait({waiter}, timeout=horizon)
            finally:
                self._waiter = None
