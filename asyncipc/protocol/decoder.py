"""The incremental frame decoder: bytes in, frames out, nothing else.

It never calls back into its owner (h11's rule): :meth:`FrameDecoder.feed` returns the
complete frames found so far and keeps any partial one for the next call. When a chunk
holds good frames followed by a malformed one, the good frames are returned and the error
is kept in :attr:`FrameDecoder.error`: the next call raises it. Once it has raised, the
stream is unrecoverable: every later :meth:`FrameDecoder.feed` raises the same error
(:meth:`FrameDecoder.eof` raises it only if nobody has seen it yet).

Bytes come in two ways. :meth:`FrameDecoder.feed` copies a chunk in (a pipe, a WebSocket
message). :meth:`FrameDecoder.get_buffer` and :meth:`FrameDecoder.buffer_updated` let an
``asyncio.BufferedProtocol`` read straight into the decoder's own buffer: the socket's
bytes land where the frames are parsed, and each frame body is copied out once.

A peer that speaks HTTP instead (a browser or curl at the broker's port, a client pointed
at an HTTP listener) is named, not reported as a huge frame length: see
:attr:`FrameDecoder.foreign_protocol`.
"""

from __future__ import annotations

import json
import struct
from types import FunctionType
from typing import Any, Final

from ..errors import FrameTooLarge, RemoteProtocolError
from .frames import (
    DEFAULT_MAX_FRAME,
    PING,
    PONG,
    PREAMBLE,
    Err,
    Frame,
    Headers,
    Hello,
    Msg,
    Op,
    Overflow,
    Pub,
    Sub,
    Unsub,
    Welcome,
)

__all__ = ["FrameDecoder", "decode_headers", "parse_frame"]

_LEN: Final = struct.Struct(">I")
_U16: Final = struct.Struct(">H")
_SID_U16: Final = struct.Struct(">IH")  # a MSG's sid and its subject's length
_U16_U32: Final = struct.Struct(">HI")  # a reply's length and, if it is 0, the header block's
_SUB: Final = struct.Struct(">IIQB")
_ERR: Final = struct.Struct(">HI")
_HTTP_METHODS: Final = (
    b"GET ",
    b"POST",
    b"PUT ",
    b"HEAD",
    b"DELE",
    b"OPTI",
    b"PATC",
    b"CONN",
    b"PRI ",
)
# What an HTTP server sends first. As a length prefix "HTTP" is 1.2 GB and "/" is no op,
# so no valid first frame can start with it.
_HTTP_RESPONSE: Final = b"HTTP/1."
_OP_MSG: Final = int(Op.MSG)
# What get_buffer offers a read. A new link offers _READ_MAX, what uvloop and asyncio read
# at a time into their own buffers (a busy link needs few system calls, and a peer that
# sends a bad frame has it read, not reset, before it hears ERR). An empty buffer halves
# towards _READ_MIN while reads use little of it, and doubles back when a read fills it:
# a quiet link comes down to 64 KiB (libuv's suggested read size), not the largest frame.
_READ_MIN: Final = 64 * 1024
_READ_MAX: Final = 256 * 1024


class FrameDecoder:
    """Turns a byte stream into frames.

    ``expect_preamble``: the server side of a stream first checks the client's
    :data:`~asyncipc.protocol.frames.PREAMBLE`. ``max_frame`` bounds the length prefix, so
    a hostile peer can make us buffer at most that many bytes. ``msg_extra`` is what a
    MSG may exceed it by: :data:`~asyncipc.protocol.frames.MSG_EXTRA` on a client, 0 on
    the broker (which never accepts a MSG).

    The allowance depends on the op byte, which arrives after the length, so the length
    is checked twice (docs/protocol.md, §5): against ``max_frame + msg_extra`` as soon as
    its 4 bytes are in, then against ``max_frame`` as soon as the op byte is in, unless
    that op is MSG. Neither check waits for the body.

    ``first_frame_max``: a smaller bound for the first frame only (the broker's
    ``max_hello``): before the handshake a peer is unknown, so the HELLO it must send
    first may not make us hold ``max_frame`` bytes. Checked on the length prefix, like
    ``max_frame``; from the second frame on, ``max_frame`` applies.
    """

    __slots__ = (
        "_buf",
        "_end",
        "_error",
        "_first_max",
        "_last_read",
        "_need_preamble",
        "_offered",
        "_raised",
        "_response_start",
        "_start",
        "_view",
        "foreign_protocol",
        "max_frame",
        "msg_extra",
    )

    def __init__(
        self,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        msg_extra: int = 0,
        expect_preamble: bool = False,
        first_frame_max: int | None = None,
    ):
        self.max_frame = max_frame
        self._first_max = first_frame_max
        self.msg_extra = msg_extra
        # The held bytes are _buf[_start:_end]; what follows _end is room for the next read.
        # Consumed bytes are skipped by moving _start, never deleted: a BufferedProtocol's
        # transport holds a view of _buf while buffer_updated runs, so _buf cannot be
        # resized then. get_buffer, which runs with no view held, moves and resizes.
        # _view is a memoryview of _buf, kept (a read slices it, the parser reads
        # payloads through it): making one per read cost about 1k instructions compiled.
        # _buf is therefore always exported: it is replaced (_use), never resized in
        # place; slice assignments of the same length, which move bytes, are allowed.
        self._buf = bytearray()  # sized by the first get_buffer or feed
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._offered = 0  # the size of the last view get_buffer handed out
        self._last_read = 0  # what the last read brought: all of it asks for more room
        self._need_preamble = expect_preamble
        # The client side looks once, at the start of the stream, for an HTTP response.
        self._response_start = not expect_preamble
        self._error: Exception | None = None
        self._raised = False
        self.foreign_protocol: str | None = None
        """``"http"`` when the peer turned out to speak HTTP: a request where the server
        side expects the preamble, or a response where the client side expects its first
        frame. Set with the :class:`~asyncipc.RemoteProtocolError` that says so, so that
        the I/O layer can answer in HTTP (or tell its user to use ``http://``) without
        reading the error's text."""

    @property
    def error(self) -> Exception | None:
        """The protocol error found in the stream, if any.

        Set without raising when :meth:`feed` returned good frames that preceded the
        malformed one: the caller handles those, then sees the error here (the next
        :meth:`feed` or :meth:`eof` raises it too).
        """
        return self._error

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete frame."""
        return self._end - self._start

    @property
    def capacity(self) -> int:
        """The size of the receive buffer: the held bytes plus room for the next read."""
        return len(self._buf)

    @property
    def pending_length(self) -> int | None:
        """The announced length of the incomplete frame held, once its 4 length bytes
        are in (``None`` before, or with no frame started): how much the peer has said
        it will send, for a deadline that grows with it."""
        if self._need_preamble or self._end - self._start < 4:
            return None
        return int(_LEN.unpack_from(self._buf, self._start)[0])

    def release(self) -> None:
        """Let the receive buffer go: the stream is over (its link is closed), and a
        buffer grown for a large frame must not live as long as this object does.
        Only with no :meth:`get_buffer` view out."""
        self._use(bytearray())
        self._start = self._end = self._offered = self._last_read = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add ``data``; return every frame it completes, in order."""
        if self._error is not None:
            self._raised = True
            raise self._error
        n = len(data)
        if self._start == self._end:
            self._start = self._end = 0
            if len(self._buf) > _READ_MAX:
                self._use(bytearray(_READ_MIN))  # after a large frame: let it go
        self._make_room(n, self._end - self._start)  # doubles: a few copies in all
        self._buf[self._end : self._end + n] = data
        self._end += n
        return self._process()

    def record(self, data: memoryview) -> list[Frame]:
        """The frames of ``data``, a unit that holds whole frames only (a shared-memory
        ring's record): copied in once, parsed as a stream's read is, and then nothing
        may be left over. Nothing may be held from before (no stream is fed as well).

        Raises as :meth:`feed` does; bytes at the end that do not make a whole frame are
        a :class:`~asyncipc.RemoteProtocolError` too, set in :attr:`error` after good
        frames. Parsing a copy costs less than reading each field through a view of the
        shared memory (issue 12), and the peer cannot change bytes already checked."""
        if self._error is not None:
            self._raised = True
            raise self._error
        n = len(data)
        if len(self._buf) < n or len(self._buf) > max(n, _READ_MAX):
            self._use(bytearray(max(n, _READ_MIN)))
        self._buf[:n] = data
        self._start, self._end = 0, n
        frames = self._process()
        left = self._end - self._start
        if left and self._error is None:
            if left < 5:
                err = RemoteProtocolError(f"{left} stray bytes at the end of a ring record")
            else:
                length: int = _LEN.unpack_from(self._buf, self._start)[0]
                err = RemoteProtocolError(
                    f"frame of {length} bytes runs past its ring record ({left - 4} bytes left)"
                )
            self._start = self._end = 0
            self._error = err
            if not frames:
                self._raised = True
                raise err
        return frames

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Room for the next read, at the end of the held bytes (``BufferedProtocol``).

        ``sizehint`` is ignored, as asyncio allows: asyncio passes -1, uvloop 64 KiB. The
        offer follows what reads have used instead (see ``_READ_MIN``), and grows with a
        partial frame so that a large frame is read in place, not copied at each read.
        The caller must not keep the view past :meth:`buffer_updated`, nor release it
        (``memoryview.release``): it may be the decoder's own view of its buffer. asyncio
        and uvloop read into it and let it go.
        """
        size = len(self._buf) or (_READ_MIN if self._first_max is not None else _READ_MAX)
        empty = self._start == self._end
        if self._last_read >= self._offered > 0:
            size = max(size, min(size * 2, _READ_MAX))  # a full read: more is waiting
        elif empty and size > _READ_MAX:
            size = _READ_MAX  # after a large frame: let it go
        elif empty and size > _READ_MIN and self._last_read < size // 8:
            size //= 2
        if empty:
            self._start = self._end = 0
            if size != len(self._buf):
                self._use(bytearray(size))
        else:
            self._make_room_for_read(size)
        end = self._end
        self._offered = len(self._buf) - end
        self._last_read = 0
        # All of it, the common case (every frame so far was whole): the view itself, not
        # a slice of it (a memoryview made per read, about 800 instructions).
        return self._view if end == 0 else self._view[end:]

    def buffer_updated(self, nbytes: int) -> list[Frame]:
        """``nbytes`` were read into the last :meth:`get_buffer` view; return every frame
        they complete, in order, as :meth:`feed` does."""
        if self._error is not None:
            self._raised = True
            raise self._error
        self._end += nbytes
        self._last_read = nbytes
        return self._process()

    def _make_room_for_read(self, size: int) -> None:
        """Room for the next read while a frame is incomplete, in a buffer of ``size``.

        Half of it at least, so that a read is not cut short by the partial frame
        that the last one left at the end: moving that frame to the front costs less than
        a system call. While a large frame arrives (it fills half the buffer or more), as
        much as it still needs, up to as much as is held: the buffer doubles, so the frame
        is copied a few times in all, not once a read, and a peer that announces a large
        frame but trickles it does not make us allocate all of it at once.
        """
        held = self._end - self._start
        n = max(_READ_MIN, size // 2)
        if held >= n and not (self._need_preamble or self._response_start):
            announced: int = _LEN.unpack_from(self._buf, self._start)[0]
            rest = announced + 4 - held
            n = max(1, min(rest, held))
        elif size > len(self._buf):  # the last read filled its offer: offer more
            new = bytearray(size)
            new[:held] = self._buf[self._start : self._end]
            self._use(new)
            self._start, self._end = 0, held
            return
        self._make_room(n, n)

    def _make_room(self, n: int, grow: int) -> None:
        """At least ``n`` bytes free after the held ones: the held bytes moved to the
        front, or into a buffer ``max(n, grow)`` larger than they are. Only with no view
        of the buffer out (not inside buffer_updated)."""
        buf, start, end = self._buf, self._start, self._end
        if len(buf) - end >= n:
            return
        held = end - start
        if held + n <= len(buf):
            buf[:held] = buf[start:end]
        else:
            new = bytearray(held + max(n, grow))
            new[:held] = buf[start:end]
            self._use(new)
        self._start, self._end = 0, held

    def _use(self, buf: bytearray) -> None:
        """Make ``buf`` the receive buffer (with its view: see ``__init__``)."""
        self._buf = buf
        self._view = memoryview(buf)

    def _process(self) -> list[Frame]:
        try:
            if self._need_preamble and not self._check_preamble():
                return []
            if self._response_start and not self._check_response_start():
                return []
            return self._frames()
        except (RemoteProtocolError, FrameTooLarge) as exc:
            self._error = exc
            self._raised = True
            self._start = self._end = 0  # the next get_buffer lets a large buffer go
            raise

    def eof(self) -> None:
        """The stream ended. Raises if it ended inside a frame (a truncated frame), or the
        pending :attr:`error` if it was not raised yet."""
        if self._error is not None:
            if not self._raised:
                self._raised = True
                raise self._error
            return
        have = self._end - self._start
        if self._need_preamble and have:
            raise RemoteProtocolError(f"connection closed during the preamble after {have} bytes")
        if have:
            if have >= 4:
                want = _LEN.unpack_from(self._buf, self._start)[0] + 4
                raise RemoteProtocolError(
                    f"connection closed mid-frame: got {have} of {want} bytes"
                )
            raise RemoteProtocolError(f"connection closed mid-frame: got {have} of 4 length bytes")

    def _head(self) -> bytes:
        """The first held bytes, enough for every check and message about the stream's
        start (rare: only until the preamble or the first frame is in)."""
        return bytes(self._buf[self._start : min(self._end, self._start + 64)])

    def _check_preamble(self) -> bool:
        buf = self._head()
        n = min(len(buf), len(PREAMBLE))
        if buf[:n] != PREAMBLE[:n]:
            head = bytes(buf[:4])
            if len(head) < 4 and any(m.startswith(head) for m in _HTTP_METHODS):
                return False  # "GE" may become "GET ": wait, to name the problem right
            if head in _HTTP_METHODS:
                self.foreign_protocol = "http"
                raise RemoteProtocolError(
                    "an HTTP request arrived on an asyncipc socket "
                    f"(starts with {bytes(buf[:16])!r}); this port speaks the asyncipc protocol"
                )
            if buf[:5] == PREAMBLE[:5]:
                raise RemoteProtocolError(
                    f"unsupported protocol version in preamble {bytes(buf[:8])!r}; "
                    f"this broker speaks {PREAMBLE!r}"
                )
            raise RemoteProtocolError(
                f"bad preamble {bytes(buf[:8])!r}: expected {PREAMBLE!r} "
                "(is this an asyncipc client?)"
            )
        if n < len(PREAMBLE):
            return False
        self._start += len(PREAMBLE)
        self._need_preamble = False
        return True

    def _check_response_start(self) -> bool:
        """False while the stream may still become an HTTP response; raises once it is one."""
        buf = self._head()
        n = min(len(buf), len(_HTTP_RESPONSE))
        if buf[:n] != _HTTP_RESPONSE[:n]:
            self._response_start = False
            return True
        if n < len(_HTTP_RESPONSE):
            return False  # "HTTP" alone would read as a 1.2 GB frame: wait to name it right
        self.foreign_protocol = "http"
        status = bytes(buf[:64]).split(b"\r\n", 1)[0].decode("latin-1")
        raise RemoteProtocolError(
            f"an HTTP response arrived instead of an asyncipc frame ({status!r})"
        )

    def _frames(self) -> list[Frame]:
        # Typed, so that the compiled build does the arithmetic on them natively: a
        # struct's unpack gives Any.
        length: int
        buf = self._buf
        out: list[Frame] = []
        pos = self._start
        end = self._end
        max_frame = self.max_frame
        limit = max_frame + self.msg_extra
        first_max = self._first_max
        if first_max is not None:
            if end - pos < 4:
                return out
            length = _LEN.unpack_from(buf, pos)[0]
            if length > first_max:
                raise FrameTooLarge(
                    f"first frame length {length} exceeds the maximum HELLO size {first_max}"
                    " (max_hello: the limit before the handshake)"
                )
            if pos + 4 + length > end:
                return out
            self._first_max = None  # the whole first frame is in: max_frame from now on
        view = self._view
        failure: RemoteProtocolError | FrameTooLarge | None = None
        try:
            # Compiled: small frames are read from one copy of what the read brought,
            # where every field is a native index (see _copied_frames). Not when the
            # first frame is large: that one is read in place, below.
            if (
                _COPY_MAX
                and end - pos >= 5
                and (end - pos <= _COPY_PEEK or _LEN.unpack_from(buf, pos)[0] <= _IN_PLACE_MIN)
            ):
                copy = bytes(view[pos : min(end, pos + _COPY_MAX)])
                pos += _copied_frames(copy, min(max_frame, _IN_PLACE_MIN), out)
            while end - pos >= 4:
                length = _LEN.unpack_from(buf, pos)[0]
                if length > max_frame:
                    # Only a MSG may be longer, and only by msg_extra; its op byte comes
                    # after the length, so the second check waits for that one byte.
                    if length > limit:
                        raise FrameTooLarge(
                            f"frame length {length} exceeds the maximum frame size {max_frame}"
                        )
                    if end - pos < 5:
                        break
                    if buf[pos + 4] != Op.MSG:
                        raise FrameTooLarge(
                            f"frame length {length} exceeds the maximum frame size {max_frame}"
                            f" (only a MSG may exceed it, by {self.msg_extra})"
                        )
                if length == 0:
                    raise RemoteProtocolError("frame of length 0 (a frame holds at least its op)")
                stop = pos + 4 + length
                if stop > end:
                    break
                op = buf[pos + 4]
                if op == _OP_MSG and length > _IN_PLACE_MIN:
                    large: Frame | None = _msg_from_head(view, pos + 5, stop) if _COPY_MAX else None
                    if large is None:
                        try:
                            large = _msg_in_place(buf, view, pos + 5, stop)
                        except (struct.error, ValueError, RemoteProtocolError):
                            large = parse_frame(op, bytes(view[pos + 5 : stop]))  # says why
                    out.append(large)
                else:
                    out.append(parse_frame(op, bytes(view[pos + 5 : stop])))
                pos = stop
        except (RemoteProtocolError, FrameTooLarge) as exc:
            if not out:
                raise
            failure = exc  # hand out the good frames first; the error waits in .error
        if failure is not None:
            self._error = failure
            self._start = self._end = 0
        elif pos == end:
            self._start = self._end = 0  # the next read starts at the front
            if len(buf) > _READ_MAX:
                # After a large frame: let the buffer go now, not at the next read, which
                # may never come (a quiet client). Rebinding is safe while the transport
                # holds a view of the old buffer; it is freed when that view is released.
                self._use(bytearray())
        else:
            self._start = pos
        return out


def _copied_frames(copy: bytes, small: int, out: list[Frame]) -> int:
    """Parse the whole frames at the front of ``copy`` of ``small`` bytes at most into
    ``out``; how many bytes they took.

    Compiled, a field read from the receive buffer (a bytearray, for which mypyc has no
    primitives) is a generic call: the length's unpack, the op's index, a view's slice and
    its bytes() cost about 2k instructions a frame. Read from ``bytes``, each is native.
    Stops before anything :meth:`FrameDecoder._frames` must look at itself: a frame that
    is large (read in place), empty, past ``max_frame`` or not complete.
    """
    p = 0
    n = len(copy)
    while n - p >= 5:
        length = _u32(copy, p)
        stop = p + 4 + length
        if length == 0 or length > small or stop > n:
            break
        out.append(parse_frame(copy[p + 4], copy[p + 5 : stop]))
        p = stop
    return p


def _msg_from_head(view: memoryview, off: int, end: int) -> Msg | None:
    """Compiled: the large MSG whose body is ``view[off:end]``, its fields read from a
    ``bytes`` copy of its first :data:`_HEAD_COPY` bytes (native indexes, as
    :func:`_copied_frames` reads small frames) and its payload copied out once. None if
    the fields do not lie within that head or are not right: :func:`_msg_in_place` then
    reads it, or :func:`parse_frame` says what is wrong. Saves the in-place reader's
    generic calls, about 3k instructions a MSG over 1 KiB."""
    head = bytes(view[off : min(end, off + _HEAD_COPY)])
    try:
        sid = _u32(head, 0)
        subject, reply, headers, at = _pub_fields(head, 4)
    except (RemoteProtocolError, IndexError):
        return None
    return Msg(sid, subject, bytes(view[off + at : end]), reply, headers)


def _msg_in_place(buf: bytearray, view: memoryview, off: int, end: int) -> Msg:
    """The MSG whose body is ``buf[off:end]``, read where it lies: only the payload is
    copied, once, not the body and then the payload out of the body's copy.

    The client's receive path (a MSG per delivery). Every field is checked against
    ``end``, since the receive buffer goes on past the frame. A body that is not a good
    MSG raises ``struct.error`` or ``ValueError`` without a useful message: the caller
    then hands it to :func:`parse_frame`, the one place that names what is wrong.
    """
    # Two struct calls in all when there is no reply subject, the common case: the sid
    # with the subject's length, and the reply's length with the header block's. A call
    # costs about 500 instructions compiled (a method call, a buffer request, a tuple).
    sid: int
    n: int
    hlen: int
    if off + 6 > end:
        raise struct.error
    sid, n = _SID_U16.unpack_from(buf, off)
    p = off + 6
    if n == 0 or p + n + 6 > end:
        raise struct.error
    subject = buf[p : p + n].decode()
    p += n
    n, hlen = _U16_U32.unpack_from(buf, p)
    p += 6
    reply = None
    if n:
        p -= 4  # the reply comes before the header block's length
        if p + n + 4 > end:
            raise struct.error
        reply = buf[p : p + n].decode()
        p += n
        hlen = _LEN.unpack_from(buf, p)[0]
        p += 4
    if p + hlen > end:
        raise struct.error
    headers = decode_headers(buf, p, p + hlen) if hlen else None
    return Msg(sid, subject, bytes(view[p + hlen : end]), reply, headers)


def parse_frame(op: int, body: bytes) -> Frame:
    """The frame of op byte ``op`` whose body (what follows the op) is ``body``.

    The one frame parser: :class:`FrameDecoder` calls it for each complete frame of a
    stream, and the transports that receive whole frames (a datagram, a ring record) call
    it directly, once they have checked the length prefix against their maximum frame
    size. Raises :class:`~asyncipc.RemoteProtocolError` for a body that breaks
    ``docs/protocol.md`` (an unknown op, a truncated body, text that is not UTF-8, ...).
    """
    try:
        if op == Op.PUB:
            subject, reply, headers, off = _pub_fields(body, 0)
            return Pub(subject, b"", reply, headers, body, off)
        if op == Op.MSG:
            sid = _u32(body, 0) if _COPY_MAX else _LEN.unpack_from(body)[0]
            subject, reply, headers, off = _pub_fields(body, 4)
            return Msg(sid, subject, body[off:], reply, headers)
        if op == Op.PING:
            return PING
        if op == Op.PONG:
            return PONG
        if op == Op.SUB:
            sid, max_msgs, max_bytes, overflow = _SUB.unpack_from(body)
            pattern, off = _text(body, _SUB.size, "subject")
            queue, off = _text(body, off, "queue")
            _no_trailing(body, off, "SUB")
            try:
                policy = Overflow(overflow)
            except ValueError:
                raise RemoteProtocolError(f"SUB with unknown overflow policy {overflow}") from None
            return Sub(sid, pattern or "", queue, policy, max_msgs, max_bytes)
        if op == Op.UNSUB:
            sid = _LEN.unpack_from(body)[0]  # a short body is "truncated", below
            _no_trailing(body, 4, "UNSUB")
            return Unsub(sid)
        if op == Op.HELLO:
            return Hello(_json(body, "HELLO"))
        if op == Op.WELCOME:
            return Welcome(_json(body, "WELCOME"))
        if op == Op.ERR:
            code, sid = _ERR.unpack_from(body)
            return Err(code, body[_ERR.size :].decode("utf-8", "replace"), sid)
    except (struct.error, IndexError):
        name = Op(op).name
        raise RemoteProtocolError(f"{name} frame truncated: body of {len(body)} bytes") from None
    raise RemoteProtocolError(f"unknown frame op {op}")


# Where a MSG is read from (``FrameDecoder._frames``). Compiled, a small one is read
# faster from a copy of its body (parse_frame): slices and decodes of bytes are mypyc
# primitives, a bytearray's are generic calls; 3.5k fewer instructions for a request
# (callgrind). Interpreted, the in-place reader is faster (6.8k fewer): parse_frame makes
# more Python calls. A frame over this size is read in place either way, so its payload
# is copied once, not twice.
_IN_PLACE_MIN: Final = 0 if isinstance(parse_frame, FunctionType) else 1024
# Compiled, the frames of a read up to _IN_PLACE_MIN bytes each are parsed from one copy
# of up to _COPY_MAX bytes of it (_copied_frames): 2k instructions fewer a frame, and the
# copy is a memcpy. A read of more than _COPY_PEEK bytes is copied only if its first frame
# is small, so that a run of large frames is not copied for nothing. Interpreted (0), the
# reads stay in place: there an index costs more than the unpack it replaces.
_COPY_MAX: Final = 0 if _IN_PLACE_MIN == 0 else 64 * 1024
_COPY_PEEK: Final = 4096
# Compiled, a MSG over _IN_PLACE_MIN has its fields read from a copy of this many bytes of
# its head when they lie there (_msg_from_head): a subject, a reply and a small header
# block do.
_HEAD_COPY: Final = 512


def _pub_fields(body: bytes, off: int) -> tuple[str, str | None, Headers | None, int]:
    subject, off = _text(body, off, "subject")
    if not subject:
        raise RemoteProtocolError("message with an empty subject")
    hlen: int
    n: int
    if len(body) - off >= 6:  # no reply subject: its length and hlen in one call
        if _COPY_MAX:  # compiled: indexes of bytes are native, an unpack is a call
            n = (body[off] << 8) | body[off + 1]
            hlen = _u32(body, off + 2)
        else:
            n, hlen = _U16_U32.unpack_from(body, off)
    else:
        n = -1  # short: _text names what is missing
    if n:
        reply, off = _text(body, off, "reply subject")
        hlen = _u32(body, off) if _COPY_MAX else _LEN.unpack_from(body, off)[0]
    else:
        reply = None
        off += 2
    off += 4
    if off + hlen > len(body):
        raise RemoteProtocolError(f"header block of {hlen} bytes runs past the frame end")
    headers = decode_headers(body, off, off + hlen) if hlen else None
    return subject, reply, headers, off + hlen


def _u32(body: bytes, off: int) -> int:
    """The big-endian u32 at ``off`` (IndexError if short, as a truncated body reads)."""
    return (body[off] << 24) | (body[off + 1] << 16) | (body[off + 2] << 8) | body[off + 3]


def _text(body: bytes, off: int, what: str) -> tuple[str | None, int]:
    n = (body[off] << 8) | body[off + 1]  # not _U16: see _msg_in_place (IndexError if short)
    off += 2
    if n == 0:
        return None, off
    if off + n > len(body):
        raise RemoteProtocolError(f"{what} of {n} bytes runs past the frame end")
    try:
        return body[off : off + n].decode(), off + n
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what} is not valid UTF-8") from None


def decode_headers(body: bytes | bytearray, off: int = 0, end: int | None = None) -> Headers:
    """The header map in the header block ``body[off:end]`` (``end`` None: the end of
    ``body``): the block after its u32 length, so that
    ``decode_headers(encode_headers(h)[4:]) == h`` for any non-empty ``h``.

    Raises :class:`~asyncipc.RemoteProtocolError` for a block that is truncated, has
    trailing bytes or holds text that is not UTF-8.
    """
    if end is None:
        end = len(body)
    if end - off < 2:
        raise RemoteProtocolError(f"header block of {end - off} byte(s) has no room for its count")
    if end - off > _DECODED_BLOCK_MAX:
        return _decode_headers(body, off, end)
    # A PUB's body is bytes: its slice is the key as it is (compiled, a primitive), not a
    # bytes() of a slice through the generic path, as a receive buffer's must be.
    block = body[off:end] if isinstance(body, bytes) else bytes(body[off:end])
    known = _decoded.get(block)
    if known is not None:
        return known.copy()  # the caller's own dict: a Message's headers may be changed
    out = _decode_headers(body, off, end)
    if len(_decoded) >= _DECODED_MAX:
        _decoded.clear()
    _decoded[block] = out.copy()
    return out


_DECODED_MAX: Final = 64
_DECODED_BLOCK_MAX: Final = 256
_decoded: Final[dict[bytes, Headers]] = {}
"""Header blocks decoded lately, by their bytes: most headers on the wire are the same
few blocks over and over (every request's time-out), and a dict copy costs a fraction of
decoding one. Only small blocks, and at most 64: a stream of unique ones clears it."""


def _decode_headers(body: bytes | bytearray, off: int, end: int) -> Headers:
    count: int = _U16.unpack_from(body, off)[0]
    klen: int
    vlen: int
    off += 2
    out: Headers = {}
    try:
        for _ in range(count):
            klen = _U16.unpack_from(body, off)[0]
            off += 2
            key = body[off : off + klen]
            off += klen
            vlen = _LEN.unpack_from(body, off)[0]
            off += 4
            value = body[off : off + vlen]
            off += vlen
            if off > end:
                raise RemoteProtocolError("header entry runs past the header block")
            try:
                out[key.decode()] = value.decode()
            except UnicodeDecodeError:
                raise RemoteProtocolError("header name or value is not valid UTF-8") from None
    except struct.error:
        # A length field cut off by the end of ``body``: within a frame that is also the
        # end of the block, and a caller with only the block gets our error, not struct's.
        raise RemoteProtocolError("header entry runs past the header block") from None
    if off != end:
        raise RemoteProtocolError(f"header block has {end - off} trailing bytes")
    return out


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise RemoteProtocolError(f"{what} body is not valid JSON") from None
    if not isinstance(value, dict):
        raise RemoteProtocolError(f"{what} body must be a JSON object")
    return value


def _no_trailing(body: bytes, off: int, what: str) -> None:
    if len(body) != off:
        raise RemoteProtocolError(f"{what} frame has {len(body) - off} unexpected trailing bytes")
