"""Run a subscription's callback on up to N messages at once (package-internal).

``Bus.subscribe(..., max_concurrency=N)``, and so every request handler (64 by default),
runs here. The obvious way, a task per message, costs a task and an extra turn of the
event loop per message: about 6 us of CPU per request on memory://, +35% on the round
trip of a handler that answers at once, which is most of them. Python 3.12's eager tasks
would avoid it; on 3.11 this pool does:

- One worker at a time, the *leader*, waits on the subscription. It takes a message and
  runs the callback itself, in its own task: ``current_task()`` and ``asyncio.timeout()``
  inside the callback are about that callback alone, as with one at a time.
- The leader runs the callback's first step itself (``coro.send(None)``). A callback
  that finishes without waiting, the common case, is done: concurrency cost nothing. One
  that waits has yielded a future; the leader first hands the lead to another worker (an
  idle one, else a new task), then goes on driving the callback to its end (``_resume``
  passes that future to the task, and results, exceptions and cancellation back), still
  in its own task. Only callbacks that wait make the pool grow.
- A worker whose callback ended goes back to leading if nobody leads, else waits idle (a
  few are kept, the rest end). At most ``limit`` callbacks run; the leader takes no
  message while they all do, so the queue's bound and overflow policy hold.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from .errors import ConnectionClosed, SlowConsumer

if TYPE_CHECKING:
    from .message import Message
    from .subscription import Subscription

__all__ = ["run_pool"]

log = logging.getLogger("asyncipc.client")

KEEP_IDLE = 4
"""Idle workers kept for the next burst; more end."""


class _Pool:
    __slots__ = (
        "busy",
        "callback",
        "ended",
        "idle",
        "leading",
        "limit",
        "loop",
        "room",
        "sub",
        "tasks",
        "workers",
    )

    def __init__(
        self,
        sub: Subscription,
        callback: Callable[[Message], Awaitable[None]],
        limit: int,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self.sub = sub
        self.callback = callback
        self.limit = limit
        self.tasks = tasks  # the bus's: close() waits for them, then cancels what is left
        self.loop = asyncio.get_running_loop()
        self.busy = 0  # callbacks running
        self.leading = True  # a worker waits on the subscription (or is about to)
        self.ended = False
        self.idle: deque[asyncio.Future[bool]] = deque()
        self.room: asyncio.Future[None] | None = None  # the leader waits for a slot
        self.workers: set[asyncio.Task[None]] = set()

    def promote(self) -> None:
        """A callback is waiting: make sure another worker leads."""
        if self.leading or self.ended:
            return
        self.leading = True
        while self.idle:
            fut = self.idle.popleft()
            if not fut.done():
                fut.set_result(True)
                return
        task = self.loop.create_task(self.work(), name=f"asyncipc callback {self.sub.subject}")
        self.workers.add(task)
        self.tasks.add(task)
        task.add_done_callback(self._gone)

    def _gone(self, task: asyncio.Task[None]) -> None:
        self.workers.discard(task)
        self.tasks.discard(task)

    def end(self) -> None:
        self.ended = True
        self.leading = False
        while self.idle:
            fut = self.idle.popleft()
            if not fut.done():
                fut.set_result(False)

    async def work(self) -> None:
        """One worker: lead, run a callback, then lead again, idle, or end."""
        sub, callback, loop, limit = self.sub, self.callback, self.loop, self.limit
        subject = sub.subject
        try:
            while True:
                # Leading.
                while self.busy >= limit:
                    self.room = room = loop.create_future()
                    await room
                try:
                    msg = await sub.__anext__()
                except StopAsyncIteration:
                    self.end()
                    return
                self.leading = False
                self.busy += 1
                try:
                    coro = _as_coroutine(callback(msg))
                    try:
                        step = coro.send(None)
                    except StopIteration:
                        pass  # done without waiting
                    else:
                        self.promote()  # it waits: another worker takes the next message
                        await _resume(coro, step)
                except Exception:
                    log.exception("callback for %r raised", subject)
                finally:
                    self.busy -= 1
                    waiting = self.room
                    if waiting is not None:
                        self.room = None
                        if not waiting.done():
                            waiting.set_result(None)
                if self.ended:
                    return
                if not self.leading:
                    self.leading = True  # nobody took over: lead again
                    continue
                if len(self.idle) >= KEEP_IDLE:
                    return
                fut: asyncio.Future[bool] = loop.create_future()
                self.idle.append(fut)
                if not await fut:
                    return
        except (ConnectionClosed, SlowConsumer) as exc:
            if isinstance(exc, SlowConsumer):
                log.warning("%s", exc)
            self.end()


def _as_coroutine(aw: Awaitable[None]) -> Coroutine[Any, Any, None]:
    """A callback may return any awaitable (a future, say): drive it through a coroutine."""
    if type(aw) is CoroutineType:
        return aw
    return _await(aw)


async def _await(aw: Awaitable[None]) -> None:
    await aw


class _Yield:
    """Awaiting it yields ``step`` to the task that runs us, and returns what comes back."""

    __slots__ = ("step",)

    def __init__(self, step: Any) -> None:
        self.step = step

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.step)


async def _resume(coro: Coroutine[Any, Any, None], step: Any) -> None:
    """Drive ``coro``, suspended on ``step`` (what its last ``send`` yielded), to its
    end in the current task: the task waits on what ``coro`` waits on, and cancelling
    the task throws into ``coro``, as if the task had run ``coro`` from the start."""
    try:
        while True:
            try:
                value = await _Yield(step)
            except BaseException as exc:  # CancelledError too: the callback decides
                step = coro.throw(exc)
            else:
                step = coro.send(value)
    except StopIteration:
        return


async def run_pool(
    sub: Subscription,
    callback: Callable[[Message], Awaitable[None]],
    limit: int,
    tasks: set[asyncio.Task[None]],
) -> None:
    """The subscription's runner (``sub._task``): the first worker of its pool."""
    pool = _Pool(sub, callback, limit, tasks)
    sub._running = pool.workers
    await pool.work()
