"""Clean-up that must finish: :func:`shielded` runs it to the end through cancellation.

``Bus.close()``, ``Broker.close()`` and the signal drain promise something (what was
published is delivered, requests in flight are answered, sockets and files are released)
and bound it with their ``drain_timeout``. A cancellation that lands halfway must not
break that promise and leave half-closed links, socket files and waiting peers behind;
it is raised once the clean-up is done (trio's shielded cancel scope, whose rule is
that what it shields is bounded: ours is, by the time-outs).

Two kinds of cancellation reach an asyncio task, and each needs its own guard:

- an anyio cancel scope's (``anyio.fail_after``, an anyio task group's scope): it is
  level-triggered, re-delivered at every await until the task leaves the scope, so an
  un-shielded clean-up would be cut short at each of its awaits. An
  ``anyio.CancelScope(shield=True)`` holds it off, and anyio delivers it after the
  clean-up, at the caller's next await.
- a bare ``Task.cancel()`` (``asyncio.timeout``, ``asyncio.TaskGroup``, ``wait_for``,
  a signal handler): anyio's shield does not stop it, because anyio only shields the
  cancellation of its own scopes. So the clean-up runs in a task of its own, which
  :func:`shielded` keeps awaiting (``asyncio.shield``) until it ends, and then raises the
  ``CancelledError`` it caught, so that the caller still stops (and
  ``asyncio.timeout`` still turns it into ``TimeoutError``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import anyio

__all__ = ["shielded"]

T = TypeVar("T")


async def shielded(cleanup: Coroutine[Any, Any, T]) -> T:
    """Run ``cleanup`` to its end even if the caller is cancelled meanwhile; then raise
    that cancellation. ``cleanup`` must be bounded (a time-out of its own).

    The task it runs in is owned here: it is awaited on every path, and only the event
    loop shutting down (which cancels every task) ends it early.
    """
    task = asyncio.ensure_future(cleanup)
    cancelled: asyncio.CancelledError | None = None
    with anyio.CancelScope(shield=True):
        while True:
            try:
                result = await asyncio.shield(task)
                break
            except asyncio.CancelledError as exc:
                if task.done():  # the clean-up itself was cancelled (loop shutdown)
                    raise
                cancelled = exc  # the caller was: finish first, raise after
            except BaseException:
                if cancelled is not None:
                    raise cancelled  # noqa: B904 - the clean-up's error is the context
                raise
    if cancelled is not None:
        raise cancelled
    return result
