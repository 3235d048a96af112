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
- A message that arrives while the leader waits on an empty queue does not wake it: the
  subscription hands it to :meth:`_Pool.run_inline` at once, in the link's read callback,
  which runs the callback's first step there as the leader would have (``current_task()``
  is the leader, the step runs in the leader's context). Waking the leader would cost a
  future and a loop turn; a handler that answers at once now answers within the read
  that brought its request, and its reply is written before the loop polls again. One
  that waits is handed to the leader (:class:`_Handoff`), which drives it to its end as
  above. Not when a task is running (a memory:// publisher delivering in its own task):
  then the message is queued as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from asyncio import tasks as _asyncio_tasks
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, Final, cast

from .errors import ConnectionClosed, SlowConsumer
from .subscription import Subscription, _make_message

if TYPE_CHECKING:
    from .message import Message
    from .protocol import Headers

__all__ = ["run_pool"]

log = logging.getLogger("asyncipc.client")

KEEP_IDLE = 4
"""Idle workers kept for the next burst; more end."""

# What makes a task the current one while something else runs its step: asyncio's own
# (Task.__step uses them), private but present in every Python we support. Without them
# no message runs inline.
_enter_task: Callable[[asyncio.AbstractEventLoop, asyncio.Task[Any]], None] | None = getattr(
    _asyncio_tasks, "_enter_task", None
)
_leave_task: Callable[[asyncio.AbstractEventLoop, asyncio.Task[Any]], None] | None = getattr(
    _asyncio_tasks, "_leave_task", None
)


class _Handoff(Exception):
    """Raised in the leader, from its wait on the subscription: a callback whose first
    step ran inline waits, and the leader drives the rest; or it raised what only the
    leader may raise (``SystemExit``, ``CancelledError``). Also ``_Pool.handoff``."""

    def __init__(
        self,
        coro: Coroutine[Any, Any, None] | None,
        step: Any,
        raised: BaseException | None,
        waiter: asyncio.Future[None],
    ) -> None:
        super().__init__("an inline callback for the leader")
        self.coro = coro
        self.step = step
        self.raised = raised
        self.waiter = waiter


class _Pool:
    __slots__ = (
        "busy",
        "callback",
        "ended",
        "handoff",
        "idle",
        "leader",
        "leader_ctx",
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
        # The worker waiting on the subscription, and the context its steps run in.
        self.leader: asyncio.Task[None] | None = None
        self.leader_ctx: contextvars.Context | None = None
        # An inline callback the leader is to take over, until it does.
        self.handoff: _Handoff | None = None

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
        ctx = contextvars.copy_context()
        task = self.loop.create_task(
            self.work(ctx), name=f"asyncipc callback {self.sub.subject}", context=ctx
        )
        self.workers.add(task)
        self.tasks.add(task)
        task.add_done_callback(self._gone)

    def _gone(self, task: asyncio.Task[None]) -> None:
        self.workers.discard(task)
        self.tasks.discard(task)

    def end(self) -> None:
        self.ended = True
        self.leading = False
        self.leader = self.leader_ctx = None
        self.sub._offer = None
        while self.idle:
            fut = self.idle.popleft()
            if not fut.done():
                fut.set_result(False)

    async def work(self, ctx: contextvars.Context) -> None:
        """One worker: lead, run a callback, then lead again, idle, or end. ``ctx`` is
        the context this worker's task runs in (the inline steps run in it too)."""
        sub, callback, loop, limit = self.sub, self.callback, self.loop, self.limit
        subject = sub.subject
        me = asyncio.current_task()
        try:
            while True:
                # Leading.
                while self.busy >= limit:
                    self.room = room = loop.create_future()
                    await room
                self.leader, self.leader_ctx = me, ctx
                handoff = None
                try:
                    msg = await sub.__anext__()
                except StopAsyncIteration:
                    self.end()
                    return
                except BaseException as exc:
                    handoff = self.handoff
                    if handoff is None:
                        raise
                    # A callback's first step ran inline and it waits: ours to drive.
                    self.handoff = None
                    if not handoff.waiter.cancelled():
                        handoff.waiter.exception()  # retrieved, whatever woke us instead
                    error = None if exc is handoff else exc  # cancelled before we woke
                self.leading = False
                self.leader = self.leader_ctx = None
                if handoff is None:
                    self.busy += 1
                try:
                    if handoff is None:
                        coro, step = _start(callback, msg)
                        error = None
                    elif handoff.raised is not None:
                        raise handoff.raised
                    else:
                        coro, step = handoff.coro, handoff.step
                    if coro is not None:
                        self.promote()  # it waits: another worker takes the next message
                        await _resume(coro, step, error)
                except Exception:
                    log.exception("callback for %r raised", subject)
                finally:
                    self.release()
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

    def release(self) -> None:
        """A callback ended: its slot is free."""
        self.busy -= 1
        waiting = self.room
        if waiting is not None:
            self.room = None
            if not waiting.done():
                waiting.set_result(None)

    def run_inline(
        self, subject: str, data: bytes, headers: Headers | None, reply: str | None
    ) -> bool:
        """The subscription's ``_offer`` hook: a message arrived while the leader waits
        on an empty queue. Run the callback's first step now, as the leader: True if it
        was taken, False to queue it (a task is running, no slot is free)."""
        sub, loop = self.sub, self.loop
        task, ctx, waiter = self.leader, self.leader_ctx, sub._waiter
        enter, leave = _enter_task, _leave_task
        if (
            enter is None
            or leave is None
            or task is None
            or ctx is None
            or waiter is None
            or waiter.done()
            or self.busy >= self.limit
            or self.handoff is not None
        ):
            return False
        msg = _make_message(sub._bus, subject, data, headers, reply)
        try:
            enter(loop, task)
        except RuntimeError:
            # A task is running (an in-process publish from one): the message is queued.
            # Asked of enter() itself, not first of asyncio.current_task(): one call less.
            return False
        self.busy += 1
        # Messages a callback makes arrive for this subscription meanwhile are queued,
        # not run inside it: the leader's waiter is off the subscription while it runs.
        sub._waiter = None
        raised: BaseException | None = None
        coro: Coroutine[Any, Any, None] | None = None
        step: Any = None
        try:
            coro, step = ctx.run(_start, self.callback, msg)
        except Exception:
            log.exception("callback for %r raised", sub.subject)
        except BaseException as exc:
            raised = exc  # SystemExit, CancelledError...: the leader raises it, as it would
        finally:
            leave(loop, task)
        if coro is None and raised is None:  # done without waiting
            self.release()
            if not waiter.done():  # (cancelled if the leader was, meanwhile)
                if sub._queue or sub._ended:
                    waiter.set_result(None)  # what came meanwhile, or the end: the leader's
                else:
                    sub._waiter = waiter
            return True
        self.handoff = handoff = _Handoff(coro, step, raised, waiter)
        if not waiter.done():
            waiter.set_exception(handoff)
        return True


def _start(
    callback: Callable[[Message], Awaitable[None]], msg: Message
) -> tuple[Coroutine[Any, Any, None] | None, Any]:
    """Call ``callback`` and run its first step: the coroutine to drive on and what it
    waits on, or ``(None, None)`` if it finished without waiting."""
    coro = _run(callback, msg)
    step = coro.send(None)
    if step is _DONE:
        return None, None
    return coro, step


async def _run(callback: Callable[[Message], Awaitable[None]], msg: Message) -> None:
    """The callback on ``msg``, then a last step that yields :data:`_DONE`.

    A coroutine that returns ends its ``send()`` with StopIteration, and catching that
    costs about 4k instructions compiled (the exception and its traceback entry), more
    than the rest of an inline callback's step. Here the callback's end is a step like
    the others: ``await`` runs it without the exception, then ``_DONE`` says it is over.
    Whoever drives us stops there and drops us, suspended (nothing is left to run). Any
    awaitable works, a future too: ``await`` takes it."""
    await callback(msg)
    await _Done()


class _Done:
    """Awaiting it yields :data:`_DONE` (from a tuple's iterator: no generator to make)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return cast("Generator[Any, None, None]", iter(_DONE_STEP))


_DONE: Final = object()
"""What :func:`_run` yields when the callback is over: never a step an awaitable yields."""
_DONE_STEP: Final = (_DONE,)


class _Yield:
    """Awaiting it yields ``step`` to the task that runs us, and returns what comes back."""

    __slots__ = ("step",)

    def __init__(self, step: Any) -> None:
        self.step = step

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.step)


async def _resume(
    coro: Coroutine[Any, Any, None], step: Any, error: BaseException | None = None
) -> None:
    """Drive ``coro`` (a :func:`_run`), suspended on ``step`` (what its last ``send``
    yielded), to its end in the current task: the task waits on what ``coro`` waits on,
    and cancelling the task throws into ``coro``, as if the task had run ``coro`` from the
    start. ``error``: the task was cancelled before it could wait on ``step`` (an inline
    callback handed over): ``step`` is cancelled and ``error`` thrown in first."""
    if error is not None:
        if isinstance(step, asyncio.Future):
            step.cancel()
        step = coro.throw(error)
    while step is not _DONE:  # _run's last step: it never returns, so no StopIteration
        try:
            value = await _Yield(step)
        except BaseException as exc:  # CancelledError too: the callback decides
            step = coro.throw(exc)
        else:
            step = coro.send(value)


async def run_pool(
    sub: Subscription,
    callback: Callable[[Message], Awaitable[None]],
    limit: int,
    tasks: set[asyncio.Task[None]],
    ctx: contextvars.Context,
) -> None:
    """The subscription's runner (``sub._task``): the first worker of its pool, run in
    ``ctx`` (``create_task(..., context=ctx)``)."""
    pool = _Pool(sub, callback, limit, tasks)
    sub._running = pool.workers
    if _enter_task is not None and _leave_task is not None and type(sub) is Subscription:
        # Not a typed subscription: its messages are decoded on the way out of the queue.
        sub._offer = pool.run_inline
    await pool.work(ctx)
