"""One framing implementation for every byte-stream channel (unix, tcp, tls; later pipes).

:class:`StreamLink` is an ``asyncio.BufferedProtocol`` (callbacks, not ``StreamReader``: a
task switch per frame would cost more than the frame) around the sans-I/O
:class:`~asyncipc.protocol.FrameDecoder`. The transport reads into the decoder's own buffer
(``get_buffer``), so a frame's bytes are copied once, from that buffer into the frame, not
first into a ``bytes`` per read and then onto the end of the decoder's buffer. A frame
nothing is queued before goes out at once; what follows it in the same event-loop turn is
gathered and handed to the transport in one piece when the turn ends, so a burst of
publishes costs three system calls, not one each (see :class:`_Reading`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import weakref
from collections.abc import Callable
from typing import Final, cast

from ..._logsafe import peer_log
from ...errors import BrokenLinkError, ClosedError, ConnectError, FrameTooLarge, ProtocolError
from ...link import Link, LinkReceiver, Listener, PeerInfo
from ...protocol import (
    MSG_EXTRA,
    PREAMBLE,
    Err,
    ErrorCode,
    Frame,
    FrameDecoder,
    Headers,
    Msg,
    Pub,
    encode,
)
from ...protocol.frames import msg_head, pub_head
from .. import TransportOptions

__all__ = ["StreamLink", "StreamListener"]

log = logging.getLogger("asyncipc.transport")

_HTTP_400 = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 55\r\n\r\nthis is an asyncipc broker socket, not an HTTP server.\n"
)

HELD_RCVBUF: Final = 4096
"""The receive buffer of a held link (:meth:`StreamLink.hold`); the kernel doubles it."""

HANG_UP_LINGER: Final = 0.5
"""Seconds a socket link that sent an ERR before hanging up (bad input, a broken limit)
goes on reading, and dropping, what its peer still sends, its own side shut
(:meth:`StreamLink._hang_up`). Closing a socket with unread input resets the
connection at once, and the reset can reach the peer before it read the ERR."""

HANG_UP_MAX_DROP: Final = 256 * 1024
"""What a link hanging up reads and drops at most: a peer that sends more after its ERR
is not listening, and is closed on (a reset) at once."""

_SCRATCH: Final = memoryview(bytearray(64 * 1024))  # what is read to be dropped: never looked at

_WRITEV_MIN: Final = 4096
"""A queued part this long is written as it is, beside the joined small ones, not copied
into the turn's join: ``writelines`` hands uvloop's ``writev`` the parts (on asyncio
before 3.12 it joins them, the copy this saves elsewhere)."""
_HOLD, _DROP = 1, 2  # StreamLink._ignoring: input left unread, or read and dropped


_TURN: Final = 0  # _Reading.mode: queued by a task, a timer, ...: not in a read
_ONE: Final = 1  # handling a read of one frame
_MANY: Final = 2  # handling a read of several frames


class _Reading:
    """What a loop's stream links are doing, which decides when a frame is written.

    - Handling a read of one frame (a request, a reply: someone waits for it), what the
      frame makes is written at once.
    - Outside a read (a task publishing), a link's first frame of a loop turn is written
      at once, and the frames queued after it in the same turn are gathered and written
      in one call when the turn ends (``call_soon``).
      The end of the turn is not scheduled after a first frame when the link knows that
      a new turn began since its last such frame: a read was handled on the loop since
      (:attr:`reads`), or its end-of-turn flush ran. When it cannot know (no read came
      between), the second frame is written at once too and the end of the turn
      scheduled then, so a burst costs three system calls and no frame waits. A
      requester's next request (its reply was read between) thus costs one loop
      iteration, not two: the handle scheduled after every request cost a zero-timeout
      poll (``epoll_pwait``) per request.
    - Handling a read of several frames (a burst of PUBs), what they make is gathered
      and each link writes once when the turn ends, as before: libuv reads a busy socket
      up to 32 times in a turn, and one write per destination and turn kept 16 KiB over
      unix ahead of tcp, where one per read did not.

    Before, every write waited for the end of the turn. A handle scheduled while uvloop
    runs handles runs in its next turn, after a zero-timeout poll: a request waited a loop
    iteration in the requester and the broker, and its reply one in the responder and the
    broker (docs/decisions.md, "A frame waits for nothing")."""

    __slots__ = ("mode", "reads")

    def __init__(self) -> None:
        self.mode = _TURN
        self.reads = 0  # reads handled by the loop's stream links: a new turn since?


_readings: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Reading]] = (
    weakref.WeakKeyDictionary()
)


def _reading_of(loop: asyncio.AbstractEventLoop) -> _Reading:
    reading = _readings.get(loop)
    if reading is None:
        reading = _readings[loop] = _Reading()
    return reading


class StreamLink(asyncio.BufferedProtocol, Link):
    """A :class:`~asyncipc.link.Link` over an asyncio stream transport."""

    # Declared again, not only on Link (a Python class): in the compiled build they are
    # then this object's own fields, so that the per-message path reads and writes them
    # directly instead of through the generic attribute lookup and the instance dict.
    max_frame: int
    write_blocked: bool
    direct: LinkReceiver | None

    def __init__(
        self,
        transport_name: str,
        options: TransportOptions,
        *,
        server_side: bool,
        peer_info: Callable[[asyncio.Transport], PeerInfo] | None = None,
        on_connected: Callable[[StreamLink], None] | None = None,
    ) -> None:
        """``on_connected``: called with the link once the connection is made and
        :attr:`peer` is known (a listener's ``accept``: the broker's per-peer limits
        need the peer's address or uid before it takes the link)."""
        self.transport = transport_name
        self.peer = PeerInfo(transport_name)
        self.max_frame = options.max_frame
        self.write_blocked = False
        self.direct = None  # never offered: a stream link always encodes
        self._high_water = options.high_water
        self._low_water = options.high_water // 4
        # A client receives MSGs, which may carry MSG_EXTRA bytes more than the maximum.
        self._decoder = FrameDecoder(
            max_frame=options.max_frame,
            msg_extra=0 if server_side else MSG_EXTRA,
            expect_preamble=server_side,
            first_frame_max=options.max_hello if server_side else None,
        )
        # The deadline of a started frame (server side): see _frame_check.
        self._frame_timeout = options.frame_timeout if server_side else 0.0
        self._frame_min_rate = max(1, options.frame_min_rate)
        self._partial_since: float | None = None  # when the incomplete frame held began
        self._frame_timer: asyncio.TimerHandle | None = None
        self._on_connected = on_connected
        self._server_side = server_side
        self._peer_info = peer_info
        self._tr: asyncio.Transport | None = None
        self._receiver: LinkReceiver | None = None
        # Its frame_received, bound once: compiled, calling a method through the
        # LinkReceiver protocol looks it up by name for every frame.
        self._on_frame: Callable[[Frame], None] | None = None
        self._early: list[Frame] = []
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._out_large = False  # _out may hold a part of _WRITEV_MIN bytes or more
        self._flush_handle: asyncio.Handle | None = None
        # The loop's read count when this link last wrote a task's frame at once with
        # nothing scheduled after it (-1: none since its last end-of-turn flush).
        self._lone_reads = -1
        self._transport_paused = False  # the OS buffer is full (pause_writing)
        self._reading_paused = False
        self._ignoring = 0  # _HOLD: a refused link kept unread; _DROP: hanging up
        self._dropped = 0  # bytes read and dropped while hanging up
        self._linger: asyncio.TimerHandle | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._blocked_reported = False
        self._closing = False
        self._exc: BaseException | None = None
        self._closed_fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._loop = asyncio.get_running_loop()
        self._reading = _reading_of(self._loop)
        self._last_rx = self._loop.time()

    # --- asyncio.Protocol callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not derive from
        # asyncio.Transport although they implement it.
        self._tr = transport = cast(asyncio.Transport, transport)
        # The OS buffer limit only decides when asyncio calls pause_writing; our own
        # high-water mark (user-space list + OS buffer) is what publishers see.
        transport.set_write_buffer_limits(high=self._high_water, low=self._low_water)
        if self._peer_info is not None:
            self.peer = self._peer_info(transport)
        if not self._server_side:
            transport.write(PREAMBLE)
        on_connected, self._on_connected = self._on_connected, None
        if on_connected is not None:
            on_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._ignoring:
            return _SCRATCH  # read to be dropped
        return self._decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if self._ignoring:
            self._drop_input(nbytes)
            return
        self._last_rx = self._loop.time()
        try:
            frames = self._decoder.buffer_updated(nbytes)
        except (ProtocolError, FrameTooLarge) as exc:
            self._protocol_violation(exc)
            return
        self._handle_read(frames)

    def data_received(self, data: bytes) -> None:
        """Bytes from a transport that does not read into our buffer (a pipe's read half:
        asyncio's pipe transports only call ``data_received``)."""
        if self._ignoring:
            self._drop_input(len(data))
            return
        self._last_rx = self._loop.time()
        try:
            frames = self._decoder.feed(data)
        except (ProtocolError, FrameTooLarge) as exc:
            self._protocol_violation(exc)
            return
        self._handle_read(frames)

    def _handle_read(self, frames: list[Frame]) -> None:
        """:meth:`_handle` the frames of one read, the loop's links knowing how many
        (:class:`_Reading`)."""
        reading = self._reading
        outer = reading.mode
        reading.mode = _MANY if len(frames) > 1 else _ONE
        reading.reads += 1
        try:
            self._handle(frames)
        finally:
            reading.mode = outer

    # --- the deadline of a started frame (slowloris) ------------------------------------

    def _track_partial(self, completed: bool) -> None:
        """After a read: note when the incomplete frame now held (if any) began.

        Any byte used to count as life, so a peer could announce 8 MiB, send all but a
        few bytes and then one byte every few seconds, and be held for ever with its
        buffer. A frame is now given a deadline from its first byte instead (see
        ``_frame_check``). A read that completed a frame and left bytes over started a
        new frame; one that completed none continues the old one: its clock runs on.
        """
        if self._decoder.buffered:
            if completed or self._partial_since is None:
                self._partial_since = self._last_rx
                if self._frame_timer is None:
                    self._frame_timer = self._loop.call_later(
                        self._frame_timeout, self._frame_check
                    )
        else:
            self._partial_since = None

    def _frame_check(self) -> None:
        """Cut off a peer whose started frame is overdue: ``frame_timeout`` seconds from
        its first byte, plus a second per ``frame_min_rate`` bytes of its announced
        length (an 8 MiB frame on a slow link is not a slowloris; one that stalls is).

        A fixed time per frame, not a minimum rate over the last seconds: a rate lets a
        peer that sent most of a large frame quickly hold its buffer for as long as it
        keeps up a trickle; a deadline frees it at a known time (docs/decisions.md)."""
        self._frame_timer = None
        since = self._partial_since
        if since is None or self._closing:
            return
        now = self._loop.time()
        if self._reading_paused:
            # We stopped reading (a ``block`` subscriber is behind): the peer cannot
            # finish, and that is our doing. The clock restarts when reading resumes.
            self._partial_since = since = now
        length = self._decoder.pending_length
        allowed = self._frame_timeout + (length or 0) / self._frame_min_rate
        elapsed = now - since
        if elapsed < allowed:
            self._frame_timer = self._loop.call_later(allowed - elapsed, self._frame_check)
            return
        have = self._decoder.buffered
        want = f"{length + 4}" if length is not None else "at least 4"
        self._cut(
            ErrorCode.PEER_TIMEOUT,
            f"frame not completed in {elapsed:.1f} s: got {have} of {want} bytes (a frame "
            f"must arrive within frame_timeout={self._frame_timeout:g} s plus 1 s per "
            f"frame_min_rate={self._frame_min_rate} bytes of its length)",
        )

    def _handle(self, frames: list[Frame]) -> None:
        if self._frame_timeout:  # after each read, whichever way it came
            self._track_partial(bool(frames))
        on_frame = self._on_frame
        if on_frame is None:
            self._early += frames
        else:
            for frame in frames:
                if self._exc is not None:
                    return
                on_frame(frame)
        error = self._decoder.error
        if error is not None and self._exc is None:
            # Good frames came before a malformed one in this chunk: they were handled
            # above; now the offender hears what was wrong.
            self._protocol_violation(error)

    def eof_received(self) -> bool:
        self._check_truncated()
        return False  # let the transport close

    def _check_truncated(self) -> None:
        """A peer that leaves in the middle of a frame gets one log line saying so."""
        if self._exc is not None:
            return
        try:
            self._decoder.eof()
        except ProtocolError as exc:
            self._exc = BrokenLinkError(f"{self.peer.describe()}: {exc}")
            peer_log().warning("mid-frame", "closing %s: %s", self.peer.describe(), exc, logger=log)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closing:
            self._check_truncated()
        # The receive buffer goes with the connection, not with this object, which a
        # reference cycle (link <-> session) may keep until the cyclic GC runs.
        self._decoder.release()
        self._partial_since = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None
        if exc is not None and self._exc is None:
            self._exc = BrokenLinkError(f"{self.peer.describe()}: {exc}")
        if self._exc is None and not self._closing:
            self._exc = BrokenLinkError(f"{self.peer.describe()} closed the connection")
        self._closing = True
        self._out.clear()
        self._out_bytes = 0
        self._out_large = False
        self.write_blocked = False
        self._wake_drainers()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        if self._receiver is not None:
            err = self._exc
            self._receiver.link_lost(None if isinstance(err, ClosedError) else err)

    def pause_writing(self) -> None:
        self._transport_paused = True
        self.write_blocked = self._blocked_reported = True

    def resume_writing(self) -> None:
        self._transport_paused = False
        self.write_blocked = self._out_bytes > self._high_water
        self._maybe_unblocked()

    # --- Link -----------------------------------------------------------------------

    def set_receiver(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        self._on_frame = receiver.frame_received
        early, self._early = self._early, []
        for frame in early:
            receiver.frame_received(frame)
        if self._closed_fut.done():
            # The peer answered and hung up before anyone listened (an HTTP server
            # replies to our preamble at once): the receiver must still hear why.
            err = self._exc
            receiver.link_lost(None if isinstance(err, ClosedError) else err)

    def send(self, frame: Frame) -> None:
        if self._closing:
            raise self._send_error()
        self._queue(encode(frame, self.max_frame))

    def publish(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        """The client's hot path: the frame's head and the payload are queued apart and
        joined once with the turn's batch (no PUB object, one copy of the payload)."""
        if self._closing:
            raise self._send_error()
        self._queue2(pub_head(subject, reply, headers, len(data), self.max_frame), data)

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
        if pub is None:
            assert data is not None  # the broker passes one or the other
            self._queue(encode(Msg(sid, subject, data, reply, headers), self.max_frame))
        else:  # the PUB's body as it came, behind a MSG head of its own
            self._queue2(msg_head(sid, pub, self.max_frame), pub.raw)

    def _queue(self, data: bytes) -> None:
        self._queue2(data, b"")

    def _queue2(self, head: bytes, body: bytes) -> None:
        """Queue a frame given in two parts (head, payload), or write it now: see
        :class:`_Reading` for when. Not concatenated when queued: the flush's join is
        the one copy of ``body``."""
        if self._flush_handle is None:
            # Nothing of this turn is queued yet.
            mode = self._reading.mode
            tr = self._tr
            if mode != _MANY and tr is not None and not self._out and not self._transport_paused:
                if mode == _TURN:
                    reads = self._reading.reads
                    if reads == self._lone_reads:
                        # Perhaps the turn of this link's last lone frame: what the
                        # rest of the turn queues is written at its end.
                        self._flush_handle = self._loop.call_soon(self._turn_ended)
                    else:  # a new turn: nothing to schedule (no extra loop iteration)
                        self._lone_reads = reads
                if len(body) < _WRITEV_MIN:
                    tr.write(head + body if body else head)
                else:
                    tr.writelines((head, body))
                return
            self._flush_handle = self._loop.call_soon(self._turn_ended)
        out = self._out
        out.append(head)
        if body:
            out.append(body)
        size = len(head) + len(body)
        if size >= _WRITEV_MIN:
            self._out_large = True  # perhaps: _gathered looks at each part
        self._out_bytes += size
        if self._out_bytes > self._high_water:
            self.write_blocked = self._blocked_reported = True

    def _turn_ended(self) -> None:
        self._flush_handle = None
        self._lone_reads = -1  # the turn has ended: the next frame is a new turn's
        self._flush()

    def _flush(self) -> None:
        handle = self._flush_handle
        if handle is not None:  # written before the turn's end (closing, hanging up)
            handle.cancel()
            self._flush_handle = None
        if not self._out or self._tr is None:
            return
        out = self._out
        large = self._out_large
        self._out = []
        self._out_bytes = 0
        self._out_large = False
        self.write_blocked = self._transport_paused
        # One system call for the whole turn: the batch joined, or, with large parts in
        # it, the large parts as they are and the runs of small ones between them joined.
        if len(out) == 1:
            self._tr.write(out[0])
        elif not large:
            self._tr.write(b"".join(out))
        else:
            self._tr.writelines(_gathered(out))
        self._maybe_unblocked()

    def _send_error(self) -> Exception:
        if self._exc is not None and not isinstance(self._exc, ClosedError):
            return BrokenLinkError(str(self._exc))
        return ClosedError(f"{self.transport} link is closed")

    @property
    def buffered(self) -> int:
        tr = self._tr
        return self._out_bytes + (tr.get_write_buffer_size() if tr is not None else 0)

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

    def _maybe_unblocked(self) -> None:
        if self.write_blocked:
            self._blocked_reported = True
            return
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

    def pause_reading(self) -> None:
        if not self._reading_paused and self._tr is not None and not self._closing:
            self._reading_paused = True
            self._tr.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._tr is not None and not self._closing:
            self._reading_paused = False
            if self._partial_since is not None:
                self._partial_since = self._loop.time()  # its clock stopped while paused
            self._tr.resume_reading()

    def hold(self) -> None:
        self._ignoring = _HOLD
        self.pause_reading()
        sock = self._tr.get_extra_info("socket") if self._tr is not None else None
        if sock is not None:
            # What the peer sends now waits in the kernel, for nobody: a few KiB of it.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, HELD_RCVBUF)

    def _drop_input(self, nbytes: int) -> None:
        """Input on a held link is never read: uvloop starts reading after
        ``connection_made`` even when it paused reading, so pause it again. A link
        hanging up reads on, into a scratch buffer, up to :data:`HANG_UP_MAX_DROP`."""
        if self._tr is None:
            return
        if self._ignoring == _HOLD:
            if not self._closing:
                self._tr.pause_reading()
            return
        self._dropped += nbytes
        if self._dropped > HANG_UP_MAX_DROP:
            self._tr.close()

    def _hang_up(self) -> None:
        """Close after an ERR, so that the peer reads it: the write side is shut once
        the ERR is out, and what the peer still sends is read and dropped until it
        closes too, or for :data:`HANG_UP_LINGER` seconds. A socket closed with
        unread input would send a reset instead, which may overtake the ERR; TLS
        (no half-close) and pipes are closed at once. The receive buffer goes now."""
        tr = self._tr
        assert tr is not None
        self._closing = True
        self._out.clear()
        self._decoder.release()  # any view of it was read into before we were called
        if tr.get_extra_info("socket") is None or not tr.can_write_eof():
            tr.close()
            return
        self._ignoring = _DROP
        tr.write_eof()
        if self._reading_paused:
            self._reading_paused = False
            tr.resume_reading()
        self._linger = self._loop.call_later(HANG_UP_LINGER, tr.close)

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def last_received(self) -> float:
        return self._last_rx

    def close(self) -> None:
        if self._closing:
            if self._linger is not None and self._tr is not None:
                self._tr.close()  # hanging up: the broker or the Bus closes, now
            return
        self._flush()
        self._closing = True
        self._exc = self._exc or ClosedError(f"{self.transport} link is closed")
        if self._tr is not None:
            self._tr.close()  # asyncio still writes out what is buffered, then closes
        elif not self._closed_fut.done():
            self._closed_fut.set_result(None)

    def abort(self) -> None:
        if self._tr is not None:
            self._closing = True
            self._exc = self._exc or ClosedError(f"{self.transport} link was aborted")
            self._tr.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)

    def _protocol_violation(self, exc: Exception) -> None:
        """Tell the offender what was wrong, in a form it can read, then hang up."""
        http = self._decoder.foreign_protocol == "http"
        if http and not self._server_side:
            # We dialled an HTTP server: that is the user's URL, not a misbehaving peer,
            # and the caller of connect() hears it (the Bus raises it from the handshake).
            self._exc = ConnectError(
                f"this is an HTTP server, not an asyncipc broker; {_http_hint(self.peer)} ({exc})"
            )
            log.debug("closing %s: %s", self.peer.describe(), exc)
        else:
            self._exc = BrokenLinkError(f"{self.peer.describe()}: {exc}")
            # One line per bad connection would let a peer flood the log: rate-limited.
            peer_log().warning("bad-frame", "closing %s: %s", self.peer.describe(), exc, logger=log)
        if self._tr is None:
            return
        code = ErrorCode.FRAME_TOO_LARGE if isinstance(exc, FrameTooLarge) else ErrorCode.PROTOCOL
        self._flush()  # answers to the good frames before the bad one go out first
        if http and self._server_side:
            self._tr.write(_HTTP_400)  # a browser or curl: answer in the language it reads
        elif not http:
            self._tr.write(encode(Err(code, str(exc)[:1000])))
        self._hang_up()

    def _cut(self, code: ErrorCode, text: str) -> None:
        """Hang up on a peer that broke a limit: one log line, an ERR naming the limit,
        and the receive buffer let go at once."""
        self._exc = BrokenLinkError(f"{self.peer.describe()}: {text}")
        log.warning("closing %s: %s", self.peer.describe(), text)
        if self._tr is None:
            return
        self._flush()
        self._tr.write(encode(Err(code, text[:1000])))
        self._hang_up()


def _gathered(out: list[bytes]) -> list[bytes]:
    """``out`` with each run of parts shorter than ``_WRITEV_MIN`` joined into one: what
    a gathered write is given, so that a large payload is not copied and a small frame
    is not a vector entry of its own."""
    parts: list[bytes] = []
    start = 0
    for i, part in enumerate(out):
        if len(part) >= _WRITEV_MIN:
            if i > start:  # (a join of one bytes object returns that object: no copy)
                parts.append(b"".join(out[start:i]))
            parts.append(part)
            start = i + 1
    if start < len(out):
        parts.append(b"".join(out[start:]))
    return parts


def _http_hint(peer: PeerInfo) -> str:
    """Where the same server is reached over HTTP, as advice for an error message."""
    address = peer.address
    if peer.transport in ("tcp", "tls") and isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        host = f"[{host}]" if ":" in str(host) else host
        return f"use {'https' if peer.transport == 'tls' else 'http'}://{host}:{port}"
    return "use an http:// URL"


class StreamListener(Listener):
    """A listening asyncio server whose connections become :class:`StreamLink` s."""

    def __init__(
        self, url: str, server: asyncio.AbstractServer, on_close: Callable[[], None] | None = None
    ) -> None:
        self.url = url
        self._server = server
        self._on_close = on_close

    async def aclose(self) -> None:
        self._server.close()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
        # Server.wait_closed() waits for every accepted connection (3.12+); the broker
        # closes those itself, so only the listening socket matters here.
