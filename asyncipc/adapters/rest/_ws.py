"""A :class:`~asyncipc.link.Link` over a WebSocket: the wire protocol on ``GET /v1/ws``.

With the subprotocol ``asyncipc.v1``, every binary WebSocket message carries one or more
whole frames of the wire protocol (docs/protocol.md), exactly as a stream would, minus the
preamble: the negotiated subprotocol already says what the bytes are. So the broker side
is an ordinary link (a :class:`~asyncipc.broker.Broker` session with the usual handshake,
token check, keep-alive and flow control) and ``asyncipc.connect("http://...")`` is an
ordinary :class:`~asyncipc.Bus`. The same class serves both ends over aiohttp's server
and client WebSockets, which share the few methods used here.

Writes are queued and sent by one writer task, several frames per WebSocket message (up
to :data:`BATCH` bytes, or one larger frame), so a burst of small publishes costs one
message, as a stream link batches per event-loop turn. ``write_blocked`` counts what waits
in the queue plus the batch being written; aiohttp itself holds at most its write limit.

The writer runs in a task group of :meth:`WebSocketLink.run`, the reader: it cannot
outlive the link, and cancelling ``run()`` cancels it and is raised once it has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp

from ..._logsafe import peer_log
from ...errors import BrokenLinkError, ClosedError, FrameTooLarge, ProtocolError
from ...link import Link, LinkReceiver, PeerInfo
from ...protocol import MSG_EXTRA, Err, ErrorCode, Frame, FrameDecoder, Headers, Pub, encode
from ...protocol.frames import encode_delivery
from ...transports import TransportOptions

__all__ = ["BATCH", "SUBPROTOCOL", "WebSocketLink", "max_message"]

log = logging.getLogger("asyncipc.transport")

SUBPROTOCOL = "asyncipc.v1"
"""``Sec-WebSocket-Protocol`` for binary frames of the wire protocol."""
BATCH = 256 * 1024
"""Frames are gathered into one WebSocket message up to this many bytes."""


def max_message(max_frame: int) -> int:
    """The largest WebSocket message either side accepts: one frame at its maximum (a MSG
    may be MSG_EXTRA bytes longer, plus its 4-byte length) or one batch."""
    return max(BATCH, max_frame + MSG_EXTRA + 4)


class _WebSocket(Protocol):
    """What aiohttp's server and client WebSockets both offer, as used here."""

    async def send_bytes(self, data: bytes) -> None: ...

    async def receive(self) -> aiohttp.WSMessage: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


class WebSocketLink(Link):
    """The wire protocol over one WebSocket. :meth:`run` reads until it closes."""

    transport = "http"

    def __init__(
        self,
        ws: _WebSocket,
        options: TransportOptions,
        *,
        server_side: bool,
        peer: PeerInfo,
        abort_transport: Callable[[], None] | None,
    ) -> None:
        self.peer = peer
        self.max_frame = options.max_frame
        self._ws = ws
        self._abort_transport = abort_transport
        self._high_water = options.high_water
        self._low_water = options.high_water // 4
        # A client receives MSGs, which may carry MSG_EXTRA bytes more than the maximum.
        self._decoder = FrameDecoder(
            max_frame=options.max_frame, msg_extra=0 if server_side else MSG_EXTRA
        )
        self._receiver: LinkReceiver | None = None
        self._early: list[Frame] = []
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._writing = 0  # bytes of the batch aiohttp is writing now
        self._loop = asyncio.get_running_loop()
        self._wake: asyncio.Future[None] | None = None
        self._resume: asyncio.Future[None] | None = None  # set while reading is paused
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._blocked_reported = False
        self._closing = False
        self._we_close = False  # close() or a protocol violation: the writer ends it
        self._aborted = False
        self._exc: BaseException | None = None
        self._last_rx = self._loop.time()
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()
        # In the task group of run(), which awaits it before returning; abort() cancels it.
        self._writer: asyncio.Task[None] | None = None
        # The client side's task running run() (run_in_task): the link owns it, and
        # wait_closed() waits for it.
        self._reader: asyncio.Task[None] | None = None

    def run_in_task(self, then: Callable[[], Awaitable[None]]) -> None:
        """Read in a task of the link's own (the client side), and await ``then()`` once
        the WebSocket has closed: :meth:`wait_closed` returns after that."""

        async def read() -> None:
            try:
                await self.run()
            finally:
                try:
                    await then()
                except Exception:  # the link is gone either way; say why it was untidy
                    log.exception("%s: releasing the connection failed", self.peer.describe())

        self._reader = self._loop.create_task(read(), name="asyncipc ws reader")

    # --- reading --------------------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the WebSocket closes; then stop the writer and report the
        loss to the receiver. The server's handler awaits this; the client a task.

        The writer is a task of this call's own group: our close (or the ERR of a
        protocol violation) is written out before this returns, and if this is
        cancelled meanwhile, the writer is cancelled and the cancellation raised."""
        exc: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as group:
                writer = self._writer = group.create_task(
                    self._write_loop(), name="asyncipc ws writer"
                )
                if self._aborted:  # abort() came before run(): nothing may be written
                    writer.cancel()
                try:
                    exc = await self._read()
                except asyncio.CancelledError:
                    exc = BrokenLinkError(f"{self.peer.describe()}: connection dropped")
                    raise
                finally:
                    self._reading_ended(exc)
        finally:
            self._finish()

    async def _read(self) -> BaseException | None:
        """Take messages until the WebSocket closes; None, or why it broke."""
        try:
            while True:
                if self._resume is not None:
                    await self._resume
                msg = await self._ws.receive()
                if msg.type is aiohttp.WSMsgType.BINARY:
                    self._data_received(msg.data)
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    self._violation(ProtocolError("text message on the asyncipc.v1 subprotocol"))
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    why = msg.data if isinstance(msg.data, BaseException) else None
                    return BrokenLinkError(f"{self.peer.describe()}: {why or 'websocket error'}")
                else:  # CLOSE, CLOSING, CLOSED
                    return None
                if self._exc is not None and not isinstance(self._exc, ClosedError):
                    return None  # a protocol violation: the ERR is on its way, read no more
        except Exception as e:  # aiohttp's own errors on a broken connection
            return BrokenLinkError(f"{self.peer.describe()}: {e}")

    def _data_received(self, data: bytes) -> None:
        self._last_rx = self._loop.time()
        try:
            frames = self._decoder.feed(data)
        except (ProtocolError, FrameTooLarge) as exc:
            self._violation(exc)
            return
        receiver = self._receiver
        if receiver is None:
            self._early += frames
        else:
            for frame in frames:
                if self._exc is not None:
                    return
                receiver.frame_received(frame)
        if self._decoder.error is not None and self._exc is None:
            self._violation(self._decoder.error)
        elif self._decoder.buffered and self._exc is None:
            # A frame never spans two WebSocket messages (docs/rest.md).
            self._violation(ProtocolError("a WebSocket message ended in the middle of a frame"))

    def _violation(self, exc: Exception) -> None:
        """Tell the offender what was wrong, then close (as a stream link does)."""
        if self._exc is not None:
            return
        peer_log().warning("bad-frame", "closing %s: %s", self.peer.describe(), exc, logger=log)
        code = ErrorCode.FRAME_TOO_LARGE if isinstance(exc, FrameTooLarge) else ErrorCode.PROTOCOL
        self._out.clear()
        self._out_bytes = 0
        self._out.append(encode(Err(code, str(exc)[:1000])))
        self._exc = BrokenLinkError(f"{self.peer.describe()}: {exc}")
        self._closing = self._we_close = True
        self._wake_writer()

    # --- writing --------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        if self._closing:
            raise self._send_error()
        self._queue(encode(frame, self.max_frame))

    def deliver(
        self,
        sid: int,
        subject: str,
        data: bytes | None,
        reply: str | None,
        headers: Headers | None,
        pub: Pub | None,
    ) -> None:
        if self._closing:
            raise self._send_error()
        self._queue(encode_delivery(sid, subject, data, reply, headers, pub, self.max_frame))

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes + self._writing > self._high_water:
            self.write_blocked = self._blocked_reported = True
        self._wake_writer()

    def _wake_writer(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _write_loop(self) -> None:
        ws = self._ws
        try:
            while True:
                if not self._out:
                    if self._closing:
                        break
                    self._wake = self._loop.create_future()
                    await self._wake
                    continue
                out = self._out
                if self._out_bytes <= BATCH:
                    self._out = []
                    batch = out[0] if len(out) == 1 else b"".join(out)
                else:
                    size, n = len(out[0]), 1
                    while n < len(out) and size + len(out[n]) <= BATCH:
                        size += len(out[n])
                        n += 1
                    batch = b"".join(out[:n])
                    del out[:n]
                self._out_bytes -= len(batch)
                self._writing = len(batch)
                await ws.send_bytes(batch)
                self._writing = 0
                self._maybe_unblocked()
            await ws.close()  # graceful: everything queued went out first
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the connection broke under us
            if self._exc is None:
                self._exc = BrokenLinkError(f"{self.peer.describe()}: {exc}")
            self._closing = True
            self._out.clear()
            self._out_bytes = self._writing = 0
            if self._abort_transport is not None:
                self._abort_transport()
            elif self._reader is not None:
                self._reader.cancel()
        finally:
            self.write_blocked = False
            self._wake_drainers()

    def _maybe_unblocked(self) -> None:
        if self.write_blocked:
            if self._out_bytes > self._low_water:
                return
            self.write_blocked = False
        self._wake_drainers()
        if self._blocked_reported:
            self._blocked_reported = False
            if self._receiver is not None and not self._closing:
                self._receiver.writing_resumed()

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _send_error(self) -> Exception:
        if self._exc is not None and not isinstance(self._exc, ClosedError):
            return BrokenLinkError(str(self._exc))
        return ClosedError("websocket link is closed")

    @property
    def buffered(self) -> int:
        return self._out_bytes + self._writing

    async def drain(self) -> None:
        while self.write_blocked:
            if self._closing:
                raise self._send_error()
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            self._blocked_reported = True
            await fut
        if self._closing and self._exc is not None and not isinstance(self._exc, ClosedError):
            raise self._send_error()

    # --- Link -----------------------------------------------------------------------

    def set_receiver(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        early, self._early = self._early, []
        for frame in early:
            receiver.frame_received(frame)

    def pause_reading(self) -> None:
        # The reader stops taking messages; aiohttp then stops reading the socket once
        # its own small buffer is full, and the peer's writes back up.
        if self._resume is None and not self._closing:
            self._resume = self._loop.create_future()

    def resume_reading(self) -> None:
        resume, self._resume = self._resume, None
        if resume is not None and not resume.done():
            resume.set_result(None)

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def last_received(self) -> float:
        return self._last_rx

    def close(self) -> None:
        if self._closing:
            return
        self._closing = self._we_close = True
        self._exc = self._exc or ClosedError("websocket link is closed")
        self.resume_reading()  # a paused reader must see the close handshake
        self._wake_writer()

    def abort(self) -> None:
        if self._aborted or self._closed_fut.done():
            return
        self._aborted = self._closing = True
        self._exc = self._exc or ClosedError("websocket link was aborted")
        self._out.clear()
        self._out_bytes = 0
        if self._writer is not None:
            self._writer.cancel()
        self.resume_reading()
        if self._abort_transport is not None:
            self._abort_transport()
        elif self._reader is not None:
            self._reader.cancel()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)
        if self._reader is not None:
            # Until the reader has also released the connection (then()). How it ended
            # is not ours to raise (link_lost told the receiver); a cancellation of the
            # caller is, so asyncio.wait and not a catch-all around the await.
            await asyncio.wait([self._reader])

    def _reading_ended(self, exc: BaseException | None) -> None:
        """The reader is done: record why, and let the writer end (run()'s task group
        then waits for it)."""
        if exc is not None and self._exc is None:
            self._exc = exc
        if self._exc is None:
            self._exc = BrokenLinkError(f"{self.peer.describe()} closed the connection")
        if not self._we_close and self._writer is not None:
            # The peer went away: nothing more can be written.
            self._writer.cancel()
        self._closing = True
        self.resume_reading()
        # Our own close (or an ERR for a protocol violation) is written out first.
        self._wake_writer()

    def _finish(self) -> None:
        """The writer has ended too: release every waiter and tell the receiver."""
        self._out.clear()
        self._out_bytes = self._writing = 0
        self.write_blocked = False
        self._wake_drainers()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        if self._receiver is not None:
            err = self._exc
            self._receiver.link_lost(None if isinstance(err, ClosedError) else err)
