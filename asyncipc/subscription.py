"""Subscriptions: a bounded queue of messages with an overflow policy.

A :class:`Subscription` is an async iterator (``async for msg in sub``) and an async
context manager (leaving it unsubscribes). Its queue is bounded by ``max_pending``
messages and ``max_bytes`` bytes; when a message arrives at a full queue the ``overflow``
policy decides (DESIGN.md §4):

``block``
    Keep the message and stop reading the link until the queue is half empty again, so
    the broker, and through it the publisher, is slowed down. Nothing is lost. The link is
    shared by every subscription of the bus: one blocked subscription pauses them all
    (as in NATS and ZeroMQ); give a consumer that must not be held up its own bus.
``drop_oldest`` / ``drop_new``
    Discard the oldest queued message, or the arriving one; :attr:`Subscription.dropped`
    counts them.
``error``
    Cut the subscription off: the queued messages are still yielded, then iteration
    raises :class:`~asyncipc.SlowConsumer`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

from ._native import mypyc_attr
from .errors import ClosedError, ConnectionClosed, InvalidBody, PermissionDenied
from .message import Message, Publisher, TypedMessage
from .protocol import Headers, Overflow

__all__ = ["OVERFLOW_POLICIES", "Subscription", "SubscriptionOwner", "TypedSubscription"]

log = logging.getLogger("asyncipc.client")

OVERFLOW_POLICIES = {
    "block": Overflow.BLOCK,
    "drop_oldest": Overflow.DROP_OLDEST,
    "drop_new": Overflow.DROP_NEW,
    "error": Overflow.ERROR,
}


# What a subscription queues for a message: (subject, data, headers, reply_to). A tuple of
# str, bytes, None or a dict of str is one the cyclic GC untracks at its first collection;
# a Message waiting in a queue would be scanned again by every older collection (and
# enough of them waiting set off full ones). The Message is made as it is taken.
_Fields = tuple[str, bytes, "Headers | None", "str | None"]

# Message.__new__ is object.__new__ for the pure-Python class; a compiled (mypyc) Message
# has its own, which object.__new__ refuses to stand in for.
_new_message: Final = Message.__new__


def _make_message(
    bus: Publisher, subject: str, data: bytes, headers: Headers | None, reply: str | None
) -> Message:
    """The Message of a delivery (``__anext__``, and a callback pool's inline run). A
    function, not a method: compiled, a method of a class open to interpreted subclasses
    is called through the generic lookup."""
    # Message(...) would cost a type call and an __init__ frame: filling the slots of a
    # bare instance takes 40 % fewer instructions.
    msg = _new_message(Message)
    msg.subject = subject
    msg.data = data
    msg.headers = headers
    msg.reply_to = reply
    msg._bus = bus
    return msg


class SubscriptionOwner(Publisher, Protocol):
    """What a :class:`Subscription` asks of the bus that made it (package-internal).

    :class:`~asyncipc.Bus` implements it. The subscription depends on this interface, not
    on the client, so that imports point one way (client → subscription). The methods are
    underscored because they are not for applications: a subscription calls them when its
    queue fills or empties and when it ends.
    """

    def _sub_blocked(self, sub: Subscription) -> None:
        """``sub`` is full under ``overflow="block"``: stop reading the link."""
        ...

    def _sub_unblocked(self, sub: Subscription) -> None:
        """``sub`` has room again: read the link unless another subscription is full."""
        ...

    def _unsubscribe(self, sub: Subscription) -> None:
        """Forget ``sub`` and tell the broker (UNSUB)."""
        ...

    def _forget(self, sub: Subscription) -> None:
        """``sub`` cut itself off (``overflow="error"``): UNSUB if the link still stands."""
        ...

    async def _drain_sub(self, sub: Subscription) -> None:
        """UNSUB, take in what the broker had already sent to ``sub``, then end it."""
        ...

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the broker has processed everything published so far."""
        ...


@mypyc_attr(allow_interpreted_subclasses=True)
class Subscription:
    """Messages on one subject pattern. Create with :meth:`Bus.subscribe`.

    Read it with ``async for msg in sub``, one at a time with :meth:`next_msg`, or a
    backlog at once with :meth:`next_batch`; all three take from the same queue."""

    __slots__ = (
        "_blocking",
        "_bus",
        "_bytes",
        "_draining",
        "_ended",
        "_error",
        "_loop",
        "_offer",
        "_queue",
        "_running",
        "_task",
        "_waiter",
        "dropped",
        "max_bytes",
        "max_pending",
        "overflow",
        "queue",
        "sid",
        "subject",
    )

    def __init__(
        self,
        bus: SubscriptionOwner,
        sid: int,
        subject: str,
        queue: str | None,
        max_pending: int,
        max_bytes: int,
        overflow: Overflow,
    ) -> None:
        self._bus = bus
        self.sid = sid
        self.subject = subject
        self.queue = queue
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.dropped = 0
        """Messages discarded by ``drop_oldest``/``drop_new`` in this process."""
        self._queue: deque[_Fields] = deque()
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        # The loop, once a wait has found it: asyncio.get_running_loop() costs a getpid()
        # system call on Python 3.11, and a consumer that keeps up waits once a message.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._blocking = False
        self._ended = False  # no more messages will arrive (unsubscribed, bus closed)
        self._error: BaseException | None = None
        self._draining = False
        self._task: asyncio.Task[None] | None = None  # the callback's, if any
        # With max_concurrency > 1: the callbacks running now (drain() waits for them).
        self._running: set[asyncio.Task[None]] | None = None
        # The callback pool's hook (_workers._Pool.run_inline): a message that arrives
        # while the pool's leader waits on the empty queue is offered to it first, to be
        # handled at once; False: queue it as usual. (Not "_inline": mypyc would name
        # the C field "__inline", a keyword to GCC.)
        self._offer: Callable[[str, bytes, Headers | None, str | None], bool] | None = None

    def __repr__(self) -> str:
        pending = len(self._queue)
        return f"<Subscription {self.sid} {self.subject!r} queue={self.queue!r} pending={pending}>"

    @property
    def pending(self) -> int:
        """Messages received and not yet taken."""
        return len(self._queue)

    @property
    def pending_bytes(self) -> int:
        """Payload bytes received and not yet taken."""
        return self._bytes

    @property
    def active(self) -> bool:
        """True until the subscription is unsubscribed, cut off or its bus closes."""
        return not self._ended

    # --- called by the Bus ----------------------------------------------------------

    def _deliver(
        self, subject: str, data: bytes, headers: Headers | None, reply: str | None
    ) -> None:
        # Called once per message: the full-queue policies live in _overflow() so that a
        # queue with room costs two comparisons and an append.
        q = self._queue
        if not q and self._waiter is not None:
            offer = self._offer
            if offer is not None and offer(subject, data, headers, reply):
                return
        nbytes = self._bytes + len(data)
        if len(q) >= self.max_pending or (nbytes > self.max_bytes and q):
            if not self._overflow():
                return
            nbytes = self._bytes + len(data)  # drop_oldest took one out
        q.append((subject, data, headers, reply))
        self._bytes = nbytes
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _overflow(self) -> bool:
        """A message arrives at a full queue: apply the policy. True to queue it."""
        q = self._queue
        overflow = self.overflow
        if overflow is Overflow.BLOCK:
            if not self._blocking:
                self._blocking = True
                self._bus._sub_blocked(self)
            return True
        if overflow is Overflow.DROP_NEW:
            self.dropped += 1
            return False
        if overflow is Overflow.DROP_OLDEST:
            old = q.popleft()
            self._bytes -= len(old[1])
            self.dropped += 1
            return True
        from .errors import SlowConsumer

        self._end(
            SlowConsumer(
                f"subscription to {self.subject!r} fell behind: "
                f"{len(q)} messages / {self._bytes} bytes pending"
            )
        )
        self._bus._forget(self)
        return False

    def _end(self, error: BaseException | None = None) -> None:
        """No more messages will come; iteration ends (or raises ``error``) once drained."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        if self._blocking:
            self._blocking = False
            self._bus._sub_unblocked(self)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- the consumer's side --------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message:
        # A message at hand costs this coroutine and nothing else: no future, no trip
        # through the event loop. Measured, a coroutine is cheaper than a plain
        # ``__anext__`` returning a completed future or a hand-written awaitable
        # (about 255 ns against 300-500 ns per message), so it stays ``async def``.
        q = self._queue
        if not q:
            await self._wait()
        subject, data, headers, reply = q.popleft()
        self._bytes -= len(data)
        if self._blocking:
            self._maybe_unblock()
        return _make_message(self._bus, subject, data, headers, reply)

    async def _wait(self) -> None:
        """Wait until a message is queued; raise once the subscription ended and is empty.

        Kept out of :meth:`__anext__` so that the path taken when messages are queued
        holds no future and no loop."""
        q = self._queue
        while not q:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None

    def _maybe_unblock(self) -> None:
        """Under ``block``: read the link again once the queue is half empty."""
        if len(self._queue) <= self.max_pending // 2 and self._bytes <= self.max_bytes // 2:
            self._blocking = False
            self._bus._sub_unblocked(self)

    async def next_msg(self, timeout: float | None = None) -> Message:
        """The next message; raises ``TimeoutError`` after ``timeout`` seconds and
        :class:`~asyncipc.ClosedError` if the subscription has ended."""
        try:
            if self._queue:  # at hand: no timer to arm and cancel
                return await self.__anext__()
            async with asyncio.timeout(timeout):
                return await self.__anext__()
        except StopAsyncIteration:
            raise ClosedError(f"subscription to {self.subject!r} has ended") from None

    async def next_batch(self, max_msgs: int = 1024, timeout: float | None = None) -> list[Message]:
        """The messages queued now, oldest first, at most ``max_msgs``; waits for one if
        none is queued.

        For consumers that handle messages in bulk: one call takes a whole backlog,
        where ``async for`` pays an await per message. It never waits for a batch to
        fill; what arrives later goes to the next call. Raises ``TimeoutError`` if
        nothing came within ``timeout`` seconds, :class:`~asyncipc.ClosedError` once
        the subscription has ended and every queued message was taken, and
        :class:`~asyncipc.SlowConsumer` after the last batch of a subscription cut off
        by ``overflow="error"``. The overflow policy works as with ``async for``: the
        queue holds at most ``max_pending`` messages whichever way it is read.
        """
        if max_msgs < 1:
            raise ValueError(f"max_msgs must be at least 1, not {max_msgs}")
        q = self._queue
        if not q:
            try:
                async with asyncio.timeout(timeout):
                    await self._wait()
            except StopAsyncIteration:
                raise ClosedError(f"subscription to {self.subject!r} has ended") from None
        return self._take(max_msgs)

    def _take(self, max_msgs: int) -> list[Message]:
        """Up to ``max_msgs`` of the queued messages, oldest first, without waiting."""
        q = self._queue
        if len(q) <= max_msgs:
            taken = list(q)
            q.clear()
            self._bytes = 0
        else:
            popleft = q.popleft
            taken = [popleft() for _ in range(max_msgs)]
            self._bytes -= sum([len(fields[1]) for fields in taken])
        if self._blocking:
            self._maybe_unblock()
        bus = self._bus
        return [
            Message(subject, data, headers, reply, bus) for subject, data, headers, reply in taken
        ]

    async def unsubscribe(self) -> None:
        """Stop receiving now. Messages already queued can still be iterated; messages
        the broker had already sent are discarded when they arrive (as in NATS). To
        leave a queue group without losing any, use :meth:`drain`."""
        if not self._ended:
            self._end()
            try:
                self._bus._unsubscribe(self)
            except ConnectionClosed:
                pass

    async def drain(self, timeout: float | None = None) -> None:
        """Stop receiving without losing anything, then wait until it is all handled.

        The broker is told to stop routing here (UNSUB), and every message it had
        already sent to this subscription is still queued (bounds lifted for them), so in
        a queue group each message reaches exactly one member even while one leaves.
        Iteration ends once the queue is empty. For a callback subscription (and
        :meth:`Bus.serve`/:meth:`Bus.handler`), also waits until the callback has
        finished those messages. Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            if not self._ended and not self._draining:
                self._draining = True
                try:
                    await self._bus._drain_sub(self)
                except ConnectionClosed:
                    self._end()
            task = self._task
            me = asyncio.current_task()
            if task is not None and task is not me:
                await asyncio.wait({task})
            running = self._running
            if running:
                others = {t for t in running if t is not me}
                if others:
                    await asyncio.wait(others)

    async def __aenter__(self) -> Subscription:
        # A round trip makes sure the broker has registered us before the body runs,
        # so a message published right after from another connection is not missed.
        if not self._ended:
            await self._bus.flush()
        # The broker answers a SUB it refuses before that flush's PONG: say so here,
        # not at the first message that will never come.
        if self._ended and isinstance(self._error, PermissionDenied):
            raise self._error
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.unsubscribe()


INVALID_LOG_INTERVAL: Final = 10.0
"""At most one warning per subscription per this many seconds for bodies that do not
decode (each is counted in :attr:`TypedSubscription.invalid`)."""


@mypyc_attr(allow_interpreted_subclasses=True)
class TypedSubscription(Subscription):
    """A subscription with ``model=``: it yields :class:`~asyncipc.message.TypedMessage`
    whose ``body`` is the decoded model. A message that does not decode is skipped,
    counted in :attr:`invalid` and logged (rate-limited); the iteration goes on."""

    __slots__ = ("_codec", "_logged_at", "invalid", "last_invalid", "model")

    def __init__(
        self,
        bus: SubscriptionOwner,
        sid: int,
        subject: str,
        queue: str | None,
        max_pending: int,
        max_bytes: int,
        overflow: Overflow,
        model: Any,
    ) -> None:
        from .typed import codec_for

        super().__init__(bus, sid, subject, queue, max_pending, max_bytes, overflow)
        self.model = model
        self._codec = codec_for(model)
        self.invalid = 0
        """Messages skipped because their body did not decode to :attr:`model`."""
        self.last_invalid = ""
        """Why the last skipped message did not decode."""
        self._logged_at = -INVALID_LOG_INTERVAL

    def _typed(self, msg: Message) -> TypedMessage | None:
        from .typed import content_type_of

        try:
            body = self._codec.decode(msg.data, content_type_of(msg.headers))
        except InvalidBody as exc:
            self.invalid += 1
            self.last_invalid = f"{msg.subject}: {exc}"
            now = time.monotonic()
            if now - self._logged_at >= INVALID_LOG_INTERVAL:
                self._logged_at = now
                log.warning(
                    "subscription to %r: skipped a message on %r that is not a valid %s: %s "
                    "(%d skipped so far)",
                    self.subject,
                    msg.subject,
                    self._codec.name,
                    exc,
                    self.invalid,
                )
            return None
        return TypedMessage(msg, body)

    async def __anext__(self) -> TypedMessage:
        while True:
            typed = self._typed(await super().__anext__())
            if typed is not None:
                return typed

    async def next_batch(self, max_msgs: int = 1024, timeout: float | None = None) -> list[Message]:
        """As :meth:`Subscription.next_batch`, each message a
        :class:`~asyncipc.message.TypedMessage`; messages that do not decode are left out
        (waits again if that leaves none)."""
        while True:
            batch = await super().next_batch(max_msgs, timeout)
            typed: list[Message] = [t for t in map(self._typed, batch) if t is not None]
            if typed:
                return typed
