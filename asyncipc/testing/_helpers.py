"""Waiting for messages in a test: with a time-out, and an AssertionError that says what
was expected on which subject and what came instead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..client import Bus
from ..errors import ClosedError
from ..message import Message
from ..subscription import Subscription

__all__ = ["Capture", "capture", "expect_messages", "expect_no_message", "next_message"]

DEFAULT_TIMEOUT = 5.0
"""Seconds a helper waits by default: long enough for a loaded CI machine, short enough
that a lost message fails the test well before pytest-timeout's guard."""


def describe(messages: list[Message], limit: int = 10) -> str:
    """``['orders.a' b'{"id": 1}', ...]``: subjects and the start of each body."""
    shown = [f"{m.subject!r} {bytes(m.data[:40])!r}" for m in messages[:limit]]
    if len(messages) > limit:
        shown.append(f"... {len(messages) - limit} more")
    return "[" + ", ".join(shown) + "]"


def _state(sub: Subscription) -> str:
    return f"{sub.pending} pending, {sub.dropped} dropped, {'active' if sub.active else 'ended'}"


async def next_message(sub: Subscription, timeout: float = DEFAULT_TIMEOUT) -> Message:
    """The next message of ``sub``, or an AssertionError after ``timeout`` seconds (or when
    the subscription ends first) naming its subject.

    ``sub.next_msg(timeout)`` raises ``TimeoutError``, which pytest reports as an error in
    the code under test; this reads as the failed expectation it is."""
    try:
        return await sub.next_msg(timeout=timeout)
    except TimeoutError:
        raise AssertionError(
            f"no message on {sub.subject!r} within {timeout} s ({_state(sub)})"
        ) from None
    except ClosedError as exc:
        raise AssertionError(
            f"subscription to {sub.subject!r} ended before a message came: {exc}"
        ) from None


async def expect_messages(
    sub: Subscription, n: int, timeout: float = DEFAULT_TIMEOUT
) -> list[Message]:
    """Exactly the next ``n`` messages of ``sub``, all within ``timeout`` seconds in total.

    On time-out (or if the subscription ends) the AssertionError names the subject, how
    many came of how many expected, and which ones."""
    got: list[Message] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < n:
                got.append(await sub.next_msg())
    except TimeoutError:
        raise AssertionError(
            f"expected {n} messages on {sub.subject!r} within {timeout} s, got {len(got)}: "
            f"{describe(got)} ({_state(sub)})"
        ) from None
    except ClosedError:
        raise AssertionError(
            f"subscription to {sub.subject!r} ended after {len(got)} of {n} messages: "
            f"{describe(got)}"
        ) from None
    return got


async def expect_no_message(sub: Subscription, within: float = 0.2) -> None:
    """Asserts that nothing arrives on ``sub`` for ``within`` seconds (and nothing is
    pending already). Flush the publishing bus first, so that "nothing" is not just "not
    yet": this waits ``within`` seconds for stragglers on top of that."""
    try:
        msg = await sub.next_msg(timeout=within)
    except (TimeoutError, ClosedError):
        return
    raise AssertionError(
        f"expected no message on {sub.subject!r}, got {describe([msg])} ({_state(sub)})"
    )


class Capture:
    """Every message on one subject pattern while ``async with capture(...)`` is open, in
    the order they came: ``messages`` (and ``subjects``, ``data`` for short asserts)."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.messages: list[Message] = []
        self._changed = asyncio.Event()

    async def _on_message(self, msg: Message) -> None:
        self.messages.append(msg)
        self._changed.set()

    @property
    def subjects(self) -> list[str]:
        return [m.subject for m in self.messages]

    @property
    def data(self) -> list[bytes]:
        return [bytes(m.data) for m in self.messages]

    def __len__(self) -> int:
        return len(self.messages)

    async def wait(self, n: int = 1, timeout: float = DEFAULT_TIMEOUT) -> list[Message]:
        """Until at least ``n`` messages in total have been captured; all of them. An
        AssertionError naming the subject and what came, after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while len(self.messages) < n:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"expected {n} messages on {self.subject!r} within {timeout} s, got "
                f"{len(self.messages)}: {describe(self.messages)}"
            ) from None
        return list(self.messages)

    def __repr__(self) -> str:
        return f"<Capture {self.subject!r} {describe(self.messages, 3)}>"


@asynccontextmanager
async def capture(bus: Bus, subject: str, queue: str | None = None) -> AsyncIterator[Capture]:
    """``async with capture(bus, "orders.>") as seen:`` subscribes, and is entered only
    once the broker has the subscription (a flush), so what is published inside the block
    is captured; ``await seen.wait(n)`` waits for ``n``. Unsubscribes on exit."""
    seen = Capture(subject)
    sub = bus.subscribe(subject, queue, callback=seen._on_message)
    try:
        await bus.flush()
        yield seen
    finally:
        if sub.active:
            await sub.unsubscribe()
