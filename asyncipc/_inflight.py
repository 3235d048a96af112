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

The hot path is one dict insert and one pop per round trip, and a counter on the
requesting session (``Session.awaiting``). The time-out header is read only when a
shutdown waits, and the table is scanned only when a session leaves with requests of
its own still out.
"""

from __future__ import annotations

import asyncio
import time

from ._session import Request, Session
from .protocol import Headers, parse_timeout
from .protocol.system import TIMEOUT_HEADER

__all__ = ["InFlight", "waits"]

MAX_TRACKED = 65536
"""Unanswered requests remembered at once; beyond, the oldest are forgotten."""


def waits(headers: Headers | None) -> float | None:
    """How long the requester waits, from a request's ``asyncipc-timeout`` header."""
    if not headers:
        return None
    text = headers.get(TIMEOUT_HEADER)
    if text is None:
        return None
    seconds = parse_timeout(text)  # the spec's form only: float() would take "inf", "1_0"
    if seconds is None or seconds >= 1e9:  # a requester that waits for ever: no deadline
        return None
    return seconds


class InFlight:
    """Reply subjects awaited, each with the session that asked."""

    __slots__ = ("_max", "_waiter", "replies")

    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self.replies: dict[str, Request] = {}
        """Reply subject -> the request. The broker and its sessions read it directly on
        the hot path (``subject in replies``)."""
        self._max = max_tracked
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self.replies)

    def add(self, reply: str, requester: Session, headers: Headers | None) -> None:
        """A request with reply subject ``reply`` and ``headers`` reached at least one
        responder."""
        replies = self.replies
        if reply in replies:
            return
        if len(replies) >= self._max:
            self.answered(next(iter(replies)))
        # The monotonic clock, not the loop's: asyncio.get_running_loop() makes a
        # getpid() system call on Python 3.11, and this runs once per request.
        replies[reply] = (requester, time.monotonic(), headers)
        requester.awaiting += 1

    def answered(self, reply: str) -> None:
        """A PUB on ``reply`` arrived (or the request is given up)."""
        replies = self.replies
        request = replies.get(reply)  # compiled, get and del are primitives; pop is a call
        if request is None:
            return
        del replies[reply]
        request[0].awaiting -= 1
        if self._waiter is not None:
            self._wake()

    def forget(self, requester: Session) -> None:
        """The requester left: nobody waits for those replies any more."""
        if requester.awaiting:
            replies = self.replies
            for reply in [r for r, request in replies.items() if request[0] is requester]:
                del replies[reply]
            requester.awaiting = 0
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if not self.replies and waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expired(self, now: float) -> float | None:
        """Give up the requests whose requester has stopped waiting; the seconds until
        the next one stops, or None if some request has no time-out."""
        horizon: float | None = float("inf")
        for reply, (_, routed, headers) in list(self.replies.items()):
            seconds = waits(headers)
            if seconds is None:
                horizon = None
                continue
            left = routed + seconds - now
            if left <= 0:
                self.answered(reply)
            elif horizon is not None:
                horizon = min(horizon, left)
        return horizon

    async def wait_empty(self) -> None:
        """Return once every tracked request is answered, forgotten or past its
        requester's time-out."""
        loop = asyncio.get_running_loop()
        while self.replies:
            horizon = self._expired(time.monotonic())
            if not self.replies:
                return
            waiter = self._waiter = loop.create_future()
            try:
                await asyncio.wait({waiter}, timeout=horizon)
            finally:
                self._waiter = None
