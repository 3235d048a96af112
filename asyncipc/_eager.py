"""Start a coroutine now, and give it a task only if it has to wait (package-internal).

Python 3.12's ``eager_task_factory`` does this for every task; on 3.11 a callback runner
does it by hand for its callbacks (``Bus._run_concurrent``): most request handlers answer
without ever waiting (``msg.respond`` returns at once while the link has room), and for
them a task per request would be the whole cost of running handlers concurrently.

:func:`start` runs the coroutine's first step here. If it finishes, nothing else is made;
if it suspends on a future, :func:`resume` takes over inside a task: it hands that future
to the task (the task waits on it exactly as if the coroutine had yielded it itself) and
passes results, exceptions and cancellation through, step by step.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any

__all__ = ["coroutine", "finished", "resume", "start"]

_DONE: Any = object()


def coroutine(aw: Awaitable[None]) -> Coroutine[Any, Any, None]:
    """``aw`` as a coroutine (a callback may return any awaitable, a future say)."""
    if inspect.iscoroutine(aw):
        return aw
    return _wrap(aw)


async def _wrap(aw: Awaitable[None]) -> None:
    await aw


def start(coro: Coroutine[Any, Any, None]) -> Any:
    """Run ``coro`` until it first suspends: what it yielded (a future, or ``None`` for a
    bare yield), or ``_DONE`` (see :func:`finished`) if it returned. Its exception, if it
    raised in that first step, propagates."""
    try:
        return coro.send(None)
    except StopIteration:
        return _DONE


def finished(step: Any) -> bool:
    """True if :func:`start` ran the coroutine to its end."""
    return step is _DONE


class _Yield:
    """Awaiting it yields ``step`` to the task that runs us, and returns what is sent back."""

    __slots__ = ("step",)

    def __init__(self, step: Any) -> None:
        self.step = step

    def __await__(self) -> Generator[Any, Any, Any]:
        return (yield self.step)


async def resume(coro: Coroutine[Any, Any, None], step: Any) -> None:
    """The rest of ``coro``, which :func:`start` left suspended on ``step``; run in a task.
    Cancelling the task cancels the future ``coro`` waits on and throws into ``coro``."""
    try:
        while True:
            try:
                value = await _Yield(step)
            except BaseException as exc:  # CancelledError included: coro decides
                step = coro.throw(exc)
            else:
                step = coro.send(value)
    except StopIteration:
        return
