"""Two one-way pipes as one two-way stream, for :class:`~._stream.StreamLink`.

Anonymous pipes (``pipe:``) and named pipes (``fifo://``) both give a link *two* file
descriptors, one to read and one to write, where a socket gives one. asyncio (and uvloop)
drive each with its own transport (``connect_read_pipe`` / ``connect_write_pipe``);
:class:`PipePairTransport` presents the two as the single ``asyncio.Transport`` the shared
stream framing expects, so pipes use exactly the framing, batching and backpressure of
the socket transports.

What "the connection closed" means with two halves:

* the read half reaches EOF (the peer closed its write end: it left or is leaving): we
  finish writing what we queued, as a socket transport does after EOF, then close;
* the write half breaks (the peer closed its read end): the read half keeps reading to
  EOF, because a peer that exits leaves its last frames in the pipe and those must still
  be delivered, not dropped;
* the link hears ``connection_lost`` once, when both halves are done.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import stat
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from .link import StreamLink

__all__ = ["PIPE_SIZE", "PipePairTransport", "check_pipe_fd", "grow_pipe", "open_pipe_link"]

PIPE_SIZE = 1024 * 1024
"""Bytes asked of the kernel per pipe (Linux ``F_SETPIPE_SZ``; 1 MiB is the default
ceiling for unprivileged users; where the call is refused the default stays). A trade-off,
measured with ``benchmarks/channels.py``: the default 64 KiB makes each 64 KiB frame cost
several wake-ups on each side, and 64 KiB messages through a broker ran at about 0.75x
the rate of ``unix://``, against about 1.05x with 1 MiB; 64 B messages ran some 10-20%
slower with 1 MiB than with 64 KiB pipes. Large messages gain more than small ones lose."""

_BROKEN = (BrokenPipeError, ConnectionResetError)


def grow_pipe(fd: int, size: int = PIPE_SIZE) -> None:
    """Best effort: make the pipe behind ``fd`` hold ``size`` bytes."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setpipe, size)


def check_pipe_fd(fd: int) -> str | None:
    """Why ``fd`` cannot carry a link (closed, not a pipe or socket), or None."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return f"file descriptor {fd} is not open"
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return f"file descriptor {fd} is not a pipe"
    return None


class _ReadHalf(asyncio.Protocol):
    def __init__(self, pair: PipePairTransport) -> None:
        self._pair = pair

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._pair._read_made(transport)

    def data_received(self, data: bytes) -> None:
        self._pair._data(data)

    def eof_received(self) -> bool:
        self._pair._eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._pair._read_lost(exc)


class _WriteHalf(asyncio.Protocol):
    def __init__(self, pair: PipePairTransport) -> None:
        self._pair = pair

    def eof_received(self) -> bool:
        return False  # uvloop reports the reader's close this way before connection_lost

    def pause_writing(self) -> None:
        self._pair._link.pause_writing()

    def resume_writing(self) -> None:
        self._pair._link.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._pair._write_lost(exc)


class PipePairTransport(asyncio.Transport):
    """A read pipe transport and a write pipe transport presented as one two-way
    transport. Made by :func:`open_pipe_link`; see the module docstring."""

    def __init__(
        self,
        link: StreamLink,
        extra: dict[str, Any],
        on_first_data: Callable[[StreamLink], None] | None,
        on_closed: Callable[[], None] | None,
    ) -> None:
        super().__init__(extra)
        self._link = link
        self._r: asyncio.ReadTransport | None = None
        self._w: asyncio.WriteTransport | None = None
        self._r_done = False
        self._w_done = False
        self._exc: Exception | None = None
        self._closing = False
        self._on_first_data = on_first_data
        self._on_closed = on_closed
        self._reported = False

    # --- the halves' callbacks --------------------------------------------------------

    def _read_made(self, transport: asyncio.BaseTransport) -> None:
        self._r = cast(asyncio.ReadTransport, transport)
        if self._closing:  # closed while the halves were being set up
            self._r.close()
            return
        # Only now: the read half is guaranteed to deliver no data before this call.
        self._link.connection_made(self)

    def _first(self) -> None:
        accept, self._on_first_data = self._on_first_data, None
        if accept is not None:
            accept(self._link)

    def _data(self, data: bytes) -> None:
        if self._on_first_data is not None:
            self._first()
        self._link.data_received(data)

    def _eof(self) -> None:
        self._on_first_data = None  # a child that never spoke is nobody's client
        self._link.eof_received()

    def _read_lost(self, exc: Exception | None) -> None:
        self._r_done = True
        if exc is not None and self._exc is None:
            self._exc = exc
        if not self._w_done and self._w is not None:
            self._w.close()  # what we queued still goes out; then the write half ends
        self._maybe_lost()

    def _write_lost(self, exc: Exception | None) -> None:
        self._w_done = True
        # A broken pipe means the peer closed its read end, i.e. it is leaving: the read
        # half's EOF (or truncation) is the better account of that, so it is not kept.
        if exc is not None and not isinstance(exc, _BROKEN) and self._exc is None:
            self._exc = exc
        self._maybe_lost()

    def _maybe_lost(self) -> None:
        if self._r_done and self._w_done and not self._reported:
            self._reported = True
            self._link.connection_lost(self._exc)
            if self._on_closed is not None:
                self._on_closed()

    # --- asyncio.Transport -------------------------------------------------------------

    def _writable(self) -> asyncio.WriteTransport | None:
        """The write half while it can be used: uvloop raises on a closed transport's
        methods, and the peer may have gone before the link even started."""
        w = self._w
        return w if w is not None and not self._w_done and not w.is_closing() else None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # Like a socket transport after the peer went: writes are dropped, and the link
        # learns of the loss through connection_lost.
        w = self._writable()
        if w is not None:
            w.write(data)

    def get_write_buffer_size(self) -> int:
        w = self._writable()
        return w.get_write_buffer_size() if w is not None else 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        w = self._writable()
        if w is not None:
            w.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        w = self._writable()
        return w.get_write_buffer_limits() if w is not None else (0, 0)

    def can_write_eof(self) -> bool:
        return False

    def is_reading(self) -> bool:
        r = self._r
        return r is not None and not self._r_done and r.is_reading()

    def pause_reading(self) -> None:
        r = self._r
        if r is not None and not self._r_done and not r.is_closing():
            r.pause_reading()

    def resume_reading(self) -> None:
        r = self._r
        if r is not None and not self._r_done and not r.is_closing():
            r.resume_reading()

    def is_closing(self) -> bool:
        return self._closing or (self._r_done and self._w_done)

    def close(self) -> None:
        """Write out what is queued, then close both halves (incoming data is dropped)."""
        if self._closing:
            return
        self._closing = True
        self._on_first_data = None
        if self._w is not None and not self._w_done:
            self._w.close()
        if self._r is not None and not self._r_done:
            self._r.close()

    def abort(self) -> None:
        self._closing = True
        self._on_first_data = None
        if self._w is not None and not self._w_done:
            self._w.abort()
        if self._r is not None and not self._r_done:
            self._r.close()


def _files(read_fd: int, write_fd: int) -> tuple[BinaryIO, BinaryIO]:
    """File objects for the pipe transports (which close them, and the fds, with them)."""
    rfile = open(read_fd, "rb", buffering=0, closefd=True)  # noqa: SIM115
    try:
        wfile = open(write_fd, "wb", buffering=0, closefd=True)  # noqa: SIM115
    except BaseException:
        rfile.close()
        raise
    return rfile, wfile


async def open_pipe_link(
    link: StreamLink,
    read_fd: int,
    write_fd: int,
    *,
    extra: dict[str, Any] | None = None,
    on_first_data: Callable[[StreamLink], None] | None = None,
    on_closed: Callable[[], None] | None = None,
) -> StreamLink:
    """Run ``link`` over ``read_fd`` and ``write_fd``, which it now owns (both are closed
    with the link, or here if this fails).

    ``on_first_data(link)`` is called just before the first bytes are handed to the link
    (the broker attaches a spawned child then, so a child that is slow to start is not
    held to the handshake time-out from the moment it was forked). ``on_closed()`` runs
    after the link heard ``connection_lost``.
    """
    loop = asyncio.get_running_loop()
    pair = PipePairTransport(link, extra or {}, on_first_data, on_closed)
    for fd in (read_fd, write_fd):
        grow_pipe(fd)
        os.set_inheritable(fd, False)
    rfile, wfile = _files(read_fd, write_fd)
    # The write half first: the read half's connection_made starts the link, which may
    # write at once (a client's preamble).
    try:
        w, _ = await loop.connect_write_pipe(lambda: _WriteHalf(pair), wfile)
    except BaseException:
        rfile.close()
        wfile.close()
        raise
    pair._w = w
    try:
        await loop.connect_read_pipe(lambda: _ReadHalf(pair), rfile)
    except BaseException:
        rfile.close()
        w.abort()
        raise
    return link
