"""Doorbells: how a ring side that went to sleep is woken, and the fence that makes it safe.

A side that found nothing to do publishes "I sleep" in the ring header and waits for its
doorbell's file descriptor to become readable, through the event loop like any socket.
The other side rings only when it sees that word, so a busy stream costs no system call
per message and an idle one no CPU. Two kinds of bell:

* :class:`EventfdBell`: an ``eventfd`` (Linux), passed to the peer over the control
  socket. Ringing adds 1; reading resets it.
* :class:`FifoBell`: a named pipe beside a ring file, for ``mmap://`` rings whose two ends
  find each other by path alone. Ringing writes a byte (dropped if the pipe is full: a
  full pipe is already ringing); reading drains it.

**The fence.** Going to sleep is the Dekker pattern: the sleeper stores its flag then
loads the other side's counter; the other side stores its counter then loads the flag.
Each pair is a store followed by a load of a different location, which even x86-64
reorders (the store waits in the store buffer while the load runs ahead), and Arm more
so: without a full barrier on both sides, both can miss each other and the sleeper sleeps
on a record that is already there. Pure Python has no fence instruction. The sleeper's
side is rare (once per idle period: ``port.FENCE_AFTER`` defers it until a sleep has
lasted 1 ms), the ringer's side is every message, so we use the
*asymmetric* fence Linux offers for exactly this: ``membarrier(GLOBAL_EXPEDITED)`` on the
sleeper's side makes every running thread of every registered process execute a full
barrier, which stands in for the barrier the hot side never issues (``docs/shm.md``).
Where ``membarrier`` is missing, :data:`FENCE` is None and sleepers re-check on a timer.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
from collections.abc import Callable

__all__ = ["BACKSTOP", "FENCE", "EventfdBell", "FifoBell", "make_fence"]

BACKSTOP = 0.05
"""Without a fence, a sleeper looks again this often (seconds): a lost wake-up costs at
most this much latency, and an idle link wakes 20 times a second instead of never."""

_MEMBARRIER = {"x86_64": 324, "aarch64": 283, "arm64": 283}
_CMD_GLOBAL_EXPEDITED = 1 << 1
_CMD_REGISTER_GLOBAL_EXPEDITED = 1 << 2


def make_fence() -> Callable[[], None] | None:
    """A full barrier across every process that called this too, or None if the kernel
    or platform does not offer ``membarrier(GLOBAL_EXPEDITED)``."""
    nr = _MEMBARRIER.get(platform.machine().lower())
    if nr is None or not hasattr(os, "eventfd"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_uint]
    # Registering is what makes *this* process a target of other processes' barriers:
    # the hot side of the pattern must be registered, and every process is both.
    if syscall(nr, _CMD_REGISTER_GLOBAL_EXPEDITED, 0) != 0:
        return None

    def fence() -> None:
        if syscall(nr, _CMD_GLOBAL_EXPEDITED, 0) != 0:  # pragma: no cover - registered above
            raise OSError(ctypes.get_errno(), "membarrier(GLOBAL_EXPEDITED) failed")

    return fence


FENCE = make_fence()


class EventfdBell:
    """A doorbell on an ``eventfd``: the waiter watches :meth:`fileno`, the peer rings."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int | None = None) -> None:
        """Own ``fd`` (one received from the peer), or create a new non-blocking eventfd."""
        if fd is None:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            os.set_blocking(fd, False)
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def ring(self) -> None:
        try:
            os.eventfd_write(self._fd, 1)
        except BlockingIOError:  # pragma: no cover - the counter is near 2**64
            pass

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FifoBell:
    """A doorbell on a named pipe, for ring ends that share only a path.

    The waiter opens it read-write (so it never sees end-of-file while no ringer has it
    open, which would make it readable forever); a ringer opens it write-only and
    non-blocking, which fails while nobody waits on it: then there is nobody to wake.
    """

    __slots__ = ("_fd", "_path", "_write")

    def __init__(self, path: str, *, waiter: bool) -> None:
        self._path = path
        self._write = not waiter
        self._fd = -1
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            pass
        if waiter:
            self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._fd

    def ring(self) -> None:
        if self._fd < 0:
            try:
                self._fd = os.open(self._path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno in (errno.ENXIO, errno.ENOENT):
                    return  # nobody waits on it
                raise
        try:
            os.write(self._fd, b"\0")
        except BlockingIOError:
            pass  # full: it is ringing already
        except BrokenPipeError:
            os.close(self._fd)
            self._fd = -1

    def clear(self) -> None:
        try:
            while os.read(self._fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
