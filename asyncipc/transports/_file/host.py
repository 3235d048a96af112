"""Which ``file://`` process hosts a directory's streams: the holder of ``dir/streams.lock``.

Streams need one writer per stream log and one place that hands out each consumer's
messages, so exactly one process of a directory runs them: the one holding an exclusive
``flock`` on ``streams.lock``. Every other process tries again every :data:`POLL` seconds;
when the host exits (or dies: the kernel drops its lock) one of them takes the lock and
loads the streams from disk. The holder writes its pid into the file, for people and for
error messages.

A non-blocking ``flock`` in a worker thread, retried, rather than a blocking one: a thread
blocked in ``flock`` cannot be woken when the process closes the bus, and
``asyncio.run`` would wait for it for ever on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os

__all__ = ["POLL", "HostLock"]

POLL = 0.2
"""Seconds between two attempts to take the lock: the longest a take-over waits."""


class HostLock:
    """The lock file ``path``; see the module docstring. Blocking calls run in threads."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.held = False
        self._fd: int | None = None

    async def try_acquire(self) -> bool:
        """One attempt; True if this process holds the lock now."""
        if self.held:
            return True
        self.held = await asyncio.to_thread(self._try)
        return self.held

    def _try(self) -> bool:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        return True

    async def wait(self) -> None:
        """Return once this process holds the lock (cancel to give up)."""
        while True:
            if await self.try_acquire():
                return
            await asyncio.sleep(POLL)  # polled: see the module docstring

    async def holder(self) -> int | None:
        """The pid the current holder wrote, if any (it may be gone already)."""
        return await asyncio.to_thread(self._read)

    def _read(self) -> int | None:
        try:
            with open(self.path, "rb") as f:
                text = f.read(32)
        except OSError:
            return None
        try:
            return int(text.strip() or b"x")
        except ValueError:
            return None

    async def release(self) -> None:
        """Let go of the lock (and of the file)."""
        fd, self._fd = self._fd, None
        held, self.held = self.held, False
        if fd is not None:
            await asyncio.to_thread(_close, fd, held)


def _close(fd: int, held: bool) -> None:
    with contextlib.suppress(OSError):
        if held:
            os.ftruncate(fd, 0)  # no stale pid once we are gone
        os.close(fd)  # closing the last descriptor drops the flock
