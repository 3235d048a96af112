"""A :class:`~asyncipc.link.Link` over a pair of shared-memory rings (``shm://``, ``mmap://``).

Frames are the wire protocol's own encoding (``docs/protocol.md``), length prefix and
all, so the broker and the bus are unchanged and the reader walks a record with the same
checks as the stream decoder. A record holds whole frames: the small frames of one
event-loop turn share one (as a stream link's one ``send`` per turn), because the work
per record (header, checks, commit, doorbell) costs more than a small frame's copy. A
large frame (16 KiB or more) is a record of its own, written part by part with no join:
a client's payload, or on the broker the PUB body it forwards behind a MSG head, is
copied once, into the ring, and read in place on the other side (only its payload is
copied out). A record of small frames is copied out whole and parsed by the stream
links' :class:`~asyncipc.protocol.FrameDecoder`: one copy of a few KiB costs less than
reading each field of each frame through a view of the shared memory. A frame larger
than half the ring travels as several records flagged ``MORE`` and is reassembled on the
other side (bounded by the maximum frame size).

Closing is in-band: :meth:`RingLink.close` writes what is queued, then a ``FIN`` record,
then hangs up the control socket. The peer reads everything up to the ``FIN`` even
though the socket is gone already, because the memory stays mapped on its side. A
control socket that ends *without* a ``FIN`` is a peer that died: whatever it committed
is still delivered, then the link breaks with :class:`~asyncipc.BrokenLinkError`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Protocol

from ...errors import (
    BrokenLinkError,
    ClosedError,
    ConnectionClosed,
    CorruptRing,
    FrameTooLarge,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from ...link import Link, LinkReceiver, PeerInfo
from ...protocol import (
    MSG_EXTRA,
    Err,
    ErrorCode,
    Frame,
    FrameDecoder,
    Headers,
    Msg,
    Op,
    Pub,
    decode_headers,
    encode,
    parse_frame,
)
from ...protocol.frames import encode_headers
from .. import TransportOptions
from .port import Bell, RingPort
from .ring import FLAG_FIN, FLAG_MORE, RECORD_HEADER, RingReader, RingWriter

if TYPE_CHECKING:
    from .setup import Endpoint

__all__ = ["CORRUPT_GRACE", "RingLink"]

log = logging.getLogger("asyncipc.transport")

CORRUPT_GRACE: Final = 0.1
"""Seconds a record that fails validation is looked at again before it counts as
corruption: on a weakly ordered CPU its last bytes may still be on their way
(``docs/shm.md``). On x86-64 a failing record is corrupt the first time."""

_HEAD: Final = struct.Struct(">IB")
_HEAD_SID: Final = struct.Struct(">IBI")
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_NONE: Final = b"\x00\x00"
_IN_PLACE: Final = 16 * 1024
"""A record of one frame this large or larger is read in place (its payload copied out
once); a record of smaller frames is copied out whole and parsed (``port_read``)."""

_Parts = tuple[Any, ...]
_MsgFields = tuple[int, str, bytes, "str | None", "Headers | None"]


class Segment(Protocol):
    """The shared memory under a ring pair: released when the link is done with it."""

    def close(self) -> None: ...


def _short(text: str | None, what: str) -> bytes:
    if text is None:
        return _NONE
    b = text.encode()
    if len(b) > 0xFFFF:
        raise LocalProtocolError(f"{what} longer than 65535 bytes")
    return _U16.pack(len(b)) + b


def _text(mv: memoryview, p: int, end: int, what: str) -> tuple[str | None, int]:
    n = _U16.unpack_from(mv, p)[0]
    p += 2
    if n == 0:
        return None, p
    if p + n > end:
        raise RemoteProtocolError(f"{what} of {n} bytes runs past the frame end")
    try:
        return str(mv[p : p + n], "utf-8"), p + n
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what} is not valid UTF-8") from None


def _decode_msg(mv: memoryview, start: int, end: int) -> _MsgFields:
    """A MSG's fields read in place; only the payload is copied out of the ring."""
    try:
        sid = _U32.unpack_from(mv, start + 5)[0]
        subject, p = _text(mv, start + 9, end, "subject")
        if not subject:
            raise RemoteProtocolError("message with an empty subject")
        reply, p = _text(mv, p, end, "reply subject")
        hlen = _U32.unpack_from(mv, p)[0]
        p += 4
        if p + hlen > end:
            raise RemoteProtocolError(f"header block of {hlen} bytes runs past the frame end")
        headers = decode_headers(bytes(mv[p : p + hlen])) if hlen else None
    except struct.error:
        raise RemoteProtocolError(f"MSG frame truncated: {end - start} bytes") from None
    return sid, subject, bytes(mv[p + hlen : end]), reply, headers


class RingLink(Link):
    """One end of a link over two rings. Built by ``shm.py`` and ``mmap.py``."""

    # Declared again, not only on Link (a Python class): compiled, they are this object's
    # own fields, read and written directly on the per-message path (as StreamLink's).
    max_frame: int
    write_blocked: bool
    direct: LinkReceiver | None

    def __init__(
        self,
        transport_name: str,
        peer: PeerInfo,
        options: TransportOptions,
        *,
        server_side: bool,
        rx: RingReader,
        tx: RingWriter,
        bell_in: Bell,
        bell_out: Bell,
        ctl: socket.socket,
        segment: Segment,
        spin: float,
    ) -> None:
        self.transport = transport_name
        self.peer = peer
        self.max_frame = options.max_frame
        self.write_blocked = False
        self.direct = None  # never offered: a ring link always encodes
        self._high_water = options.high_water
        self._low_water = options.high_water // 4
        self._rx_max = options.max_frame + (0 if server_side else MSG_EXTRA)
        self._rx = rx
        self._rx_buf = rx.buffer  # taken once: records are read in place through it
        self._tx = tx
        # Frames above half the ring go in pieces, so one never waits for the whole ring.
        self._piece = min(tx.max_payload, tx.capacity // 2 - RECORD_HEADER)
        # Small frames are joined into one record per loop turn, at most _batch_max bytes.
        self._small = min(16 * 1024, self._piece // 2)
        self._batch_max = min(64 * 1024, self._piece)
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self._mids: dict[str, bytes] = {}  # subject -> its encoded PUB fields, no reply/headers
        self._pending: deque[tuple[_Parts, int, int]] = deque()
        self._pending_bytes = 0
        self._decoder = FrameDecoder(
            max_frame=options.max_frame, msg_extra=0 if server_side else MSG_EXTRA
        )
        self._held: list[Frame] | None = None  # the frames of the record being read
        self._held_at = 0  # the next of them to hand on (a pause stops between two)
        self._partial: bytearray | None = None
        self._receiver: LinkReceiver | None = None
        self._paused = False
        self._closing = False  # close() called: FIN queued, nothing more accepted
        self._dead = False  # closing, lost, or the peer gone: sends raise
        self._lost = False  # finished: resources released
        self._peer_gone = False
        self._exc: BaseException | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._blocked_reported = False
        self._loop = asyncio.get_running_loop()
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()
        self._last_rx = self._loop.time()
        self._corrupt_since: float | None = None
        self._ctl = ctl
        self._segment = segment
        self._bells = (bell_in, bell_out)
        self._port = RingPort(self, rx, tx, bell_in, bell_out, ctl=ctl, spin=spin)

    @classmethod
    def from_endpoint(
        cls,
        endpoint: Endpoint,
        transport: str,
        options: TransportOptions,
        spin: float,
        server: bool,
    ) -> RingLink:
        """A link over a ring pair that ``setup`` set up."""
        return cls(
            transport,
            endpoint.peer,
            options,
            server_side=server,
            rx=endpoint.rx,
            tx=endpoint.tx,
            bell_in=endpoint.bell_in,
            bell_out=endpoint.bell_out,
            ctl=endpoint.ctl,
            segment=endpoint.segment,
            spin=spin,
        )

    # --- sending --------------------------------------------------------------------------
    #
    # Small frames are gathered per event-loop turn (as the stream link gathers its writes)
    # and go into the ring as one record: the per-record work (header, check, commit,
    # doorbell) is then paid once per turn, not once per frame. A frame of more than
    # ``_small`` bytes goes as a record of its own, written part by part with no join,
    # and one of more than half the ring in pieces.

    def send(self, frame: Frame) -> None:
        if self._dead:
            raise self._send_error()
        data = encode(frame, self.max_frame)
        if len(data) <= self._small:
            self._queue(data)
        else:
            self._put_big((data,), len(data))

    def publish(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        if self._dead:
            raise self._send_error()
        plain = reply is None and not headers
        mid = self._mids.get(subject) if plain else None
        if mid is None:
            mid = _short(subject, "subject") + _short(reply, "reply subject")
            mid += encode_headers(headers)
            if plain:
                if len(self._mids) >= 1024:
                    self._mids.clear()
                self._mids[subject] = mid
        length = 1 + len(mid) + len(data)
        if length > self.max_frame:
            raise FrameTooLarge(
                f"PUB frame of {length} bytes exceeds the maximum frame size {self.max_frame}"
            )
        if length < self._small:
            self._queue(_HEAD.pack(length, Op.PUB) + mid + data)
        else:
            self._put_big((_HEAD.pack(length, Op.PUB), mid, data), length + 4)

    def deliver(
        self,
        sid: int,
        subject: str,
        data: bytes | None,
        reply: str | None,
        headers: Headers | None,
        pub: Pub | None,
    ) -> None:
        if self._dead:
            raise self._send_error()
        if pub is None:
            assert data is not None  # the broker passes one or the other
            self.send(Msg(sid, subject, data, reply, headers))
            return
        raw = pub.raw
        length = len(raw) + 5
        if length > self.max_frame + MSG_EXTRA:
            raise FrameTooLarge(
                f"message of {length} bytes exceeds the maximum frame {self.max_frame}"
            )
        if length < self._small:
            self._queue(_HEAD_SID.pack(length, Op.MSG, sid) + raw)
        else:
            self._put_big((_HEAD_SID.pack(length, Op.MSG, sid), raw), length + 4)

    def _queue(self, frame: bytes) -> None:
        """A small frame: gathered with the rest of this loop turn's into one record."""
        if self._out_bytes + len(frame) > self._batch_max:
            self._flush()
        self._out.append(frame)
        self._out_bytes += len(frame)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)
        if self._out_bytes + self._pending_bytes > self._high_water:
            self.write_blocked = self._blocked_reported = True

    def _flush(self) -> None:
        """The gathered frames into the ring, joined: one record, one copy."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        out = self._out
        if not out or self._lost:
            return
        n = self._out_bytes
        self._out = []
        self._out_bytes = 0
        try:
            self._put_record((out[0] if len(out) == 1 else b"".join(out),), n, 0)
        except ConnectionClosed:
            return  # a corrupt ring: _put_record has cut the link off and said why
        if self.write_blocked and self._pending_bytes <= self._low_water:
            self._unblock()

    def _put_big(self, parts: _Parts, n: int) -> None:
        """A large frame: a record of its own (after what was gathered), or pieces."""
        self._flush()
        if n > self._piece:
            whole = memoryview(b"".join(parts))
            for off in range(0, n, self._piece):
                chunk = whole[off : off + self._piece]
                more = FLAG_MORE if off + self._piece < n else 0
                self._put_record((chunk,), len(chunk), more)
        else:
            self._put_record(parts, n, 0)

    def _put_record(self, parts: _Parts, n: int, flags: int) -> None:
        if not self._pending:
            tail = self._tx.tail
            try:
                written = self._tx.try_write_parts(parts, n, flags)
            except CorruptRing as exc:
                self._protocol_violation(exc)
                raise self._send_error() from None
            if self._tx.tail != tail:
                # (Even when the record did not fit: a pad committed alone must be read
                # for the space behind it to come free, so the reader is rung for it too.)
                self._port.wrote()
            if written:
                return
        self._pending.append((parts, n, flags))
        self._pending_bytes += n
        if self._pending_bytes + self._out_bytes > self._high_water:
            self.write_blocked = self._blocked_reported = True
        self._port.poke()

    def _send_error(self) -> Exception:
        if self._exc is not None and not isinstance(self._exc, ClosedError):
            return BrokenLinkError(str(self._exc))
        return ClosedError(f"{self.transport} link is closed")

    @property
    def buffered(self) -> int:
        try:
            in_ring = self._tx.used if not self._lost else 0
        except CorruptRing:
            in_ring = 0
        return self._out_bytes + self._pending_bytes + in_ring

    async def drain(self) -> None:
        while self.write_blocked:
            if self._dead and not self._closing:
                raise self._send_error()
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            self._blocked_reported = True
            await fut
        if self._exc is not None and not isinstance(self._exc, ClosedError):
            raise self._send_error()

    def _unblock(self) -> None:
        self.write_blocked = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        if self._blocked_reported:
            self._blocked_reported = False
            if self._receiver is not None and not self._dead:
                self._receiver.writing_resumed()

    # --- the port's questions ---------------------------------------------------------------

    @property
    def port_reading(self) -> bool:
        """PortOwner (package-internal): True while inbound records are wanted."""
        return (
            self._receiver is not None and not self._paused and not self._lost and not self._closing
        )

    @property
    def port_writes_waiting(self) -> bool:
        """PortOwner (package-internal): True while writes wait for ring space."""
        return bool(self._pending) and not self._lost

    def port_write(self) -> bool:
        """PortOwner (package-internal): queued writes into the ring; True if any went."""
        tx = self._tx
        tail = tx.tail
        pending = self._pending
        wrote = fin = False
        try:
            while pending:
                parts, n, flags = pending[0]
                if not tx.try_write_parts(parts, n, flags):
                    break
                pending.popleft()
                self._pending_bytes -= n
                wrote = True
                fin = bool(flags & FLAG_FIN)
        except CorruptRing as exc:
            self._protocol_violation(exc)
            return False
        if tx.tail != tail:
            self._port.wrote()  # records, or only a pad (see _put_record)
        if wrote:
            if fin:
                self._finish(None)
                return True
            if self.write_blocked and self._pending_bytes + self._out_bytes <= self._low_water:
                self._unblock()
        return wrote

    def port_read(self, limit: int) -> int:
        """PortOwner (package-internal): handle up to ``limit`` records; how many."""
        receiver = self._receiver
        if receiver is None or self._paused or self._lost or self._closing:
            return 0
        rx = self._rx
        mv = self._rx_buf
        head = rx.head
        n = 0
        try:
            while n < limit:
                held = self._held
                if held is None:  # no record in hand: take the next one
                    got = rx.next_record()
                    if got is None:
                        break
                    start, length, flags = got
                    if flags & FLAG_FIN:
                        rx.consume()
                        n += 1
                        self._peer_closed()
                        break
                    if flags or self._partial is not None:
                        whole = self._piece_in(mv, start, length, flags)
                        rx.consume()
                        n += 1
                        if whole is not None:
                            w = memoryview(whole)
                            if self._frame_end(w, 0, len(w)) != len(w):
                                raise RemoteProtocolError(
                                    f"a frame in pieces has {len(w)} bytes, not its length"
                                )
                            self._deliver(receiver, self._frame(w, 0, len(w)))
                            if self._paused or self._lost or self._closing:
                                break
                        continue
                    end = start + length
                    if length >= _IN_PLACE and self._frame_end(mv, start, end) == end:
                        # One large frame: read in place, only its payload copied out.
                        item = self._frame(mv, start, end)
                        rx.consume()
                        n += 1
                        self._deliver(receiver, item)
                        if self._paused or self._lost or self._closing:
                            break
                        continue
                    held = self._held = self._decoder.record(mv[start:end])
                    self._held_at = 0
                # The frames of the record, handed on one by one; a pause between two
                # keeps the rest, and the record in the ring, for later.
                i = self._held_at
                while i < len(held):
                    frame = held[i]
                    i += 1
                    n += 1
                    receiver.frame_received(frame)
                    if self._paused or self._lost or self._closing:
                        break
                if self._lost:
                    break
                if i < len(held):
                    self._held_at = i
                    break
                self._held = None
                rx.consume()
                error = self._decoder.error
                if error is not None:
                    raise error  # after the good frames that came before it
                if self._paused or self._closing:
                    break
        except CorruptRing as exc:
            now = self._loop.time()
            if self._corrupt_since is None:
                self._corrupt_since = now
            if now - self._corrupt_since >= CORRUPT_GRACE or self._peer_gone:
                self._protocol_violation(exc)
            return n
        except (RemoteProtocolError, FrameTooLarge) as exc:
            self._protocol_violation(exc)
            return n
        if n:
            self._last_rx = self._loop.time()
            self._corrupt_since = None
        if self._lost:
            return n
        if rx.head != head:
            # (Not "if n": a pad consumed alone frees space a writer may be waiting for.)
            self._port.consumed()
        if self._peer_gone and not self._paused and self._held is None:
            try:
                more = rx.has_data()
            except CorruptRing:
                more = False
            if not more:
                self._finish(
                    BrokenLinkError(
                        f"{self.peer.describe()} went away without closing the link "
                        "(its process ended or was killed)"
                    )
                )
        return n

    @staticmethod
    def _deliver(receiver: LinkReceiver, item: Frame | _MsgFields) -> None:
        if type(item) is tuple:
            receiver.msg_received(*item)
        else:
            receiver.frame_received(item)  # type: ignore[arg-type]

    def _peer_closed(self) -> None:
        """The peer's FIN: everything it sent is delivered; the link ends."""
        if self._partial is not None:
            raise RemoteProtocolError(
                f"the peer closed in the middle of a frame ({len(self._partial)} bytes in)"
            )
        self._finish(BrokenLinkError(f"{self.peer.describe()} closed the link"))

    def _piece_in(self, mv: memoryview, start: int, length: int, flags: int) -> bytearray | None:
        partial = self._partial
        if partial is None:
            partial = self._partial = bytearray()
        if len(partial) + length > self._rx_max + 4:
            raise FrameTooLarge(
                f"frame in pieces exceeds the maximum frame size {self._rx_max} "
                f"({len(partial) + length} bytes so far)"
            )
        partial += mv[start : start + length]
        if flags & FLAG_MORE:
            return None
        self._partial = None
        return partial

    def _frame_end(self, mv: memoryview, p: int, end: int) -> int:
        """Where the frame at ``p`` of a record ending at ``end`` ends (its checks)."""
        if end - p < 5:
            raise RemoteProtocolError(f"{end - p} stray bytes at the end of a ring record")
        flen: int = _U32.unpack_from(mv, p)[0]
        if flen > self._rx_max:
            raise FrameTooLarge(
                f"frame length {flen} exceeds the maximum frame size {self._rx_max}"
            )
        if flen == 0:
            raise RemoteProtocolError("frame of length 0 (a frame holds at least its op)")
        stop = p + 4 + flen
        if stop > end:
            raise RemoteProtocolError(
                f"frame of {flen} bytes runs past its ring record ({end - p - 4} bytes left)"
            )
        return stop

    def _frame(self, mv: memoryview, p: int, stop: int) -> Frame | _MsgFields:
        """The frame in ``mv[p:stop]`` (length prefix included), decoded: a MSG as its
        fields (only the payload is copied out of the ring), anything else by the codec."""
        op = mv[p + 4]
        if op == Op.MSG:
            return _decode_msg(mv, p, stop)
        return parse_frame(op, bytes(mv[p + 5 : stop]))

    def port_peer_gone(self, problem: str | None) -> None:
        """PortOwner (package-internal): the control socket ended or carried garbage."""
        if self._lost:
            return
        if problem is not None:
            self._protocol_violation(RemoteProtocolError(problem))
            return
        self._peer_gone = self._dead = True
        if self._closing:
            self._finish(None)
            return
        self._exc = BrokenLinkError(f"{self.peer.describe()} went away")
        # What it committed is still in our mapping: deliver it, then break the link.
        self._out.clear()
        self._out_bytes = 0
        self._pending.clear()
        self._pending_bytes = 0
        if self.write_blocked:
            self._unblock()
        self._port.poke()

    # --- receiving control -----------------------------------------------------------------

    def set_receiver(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        self._port.poke()

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._port.poke()

    @property
    def closed(self) -> bool:
        return self._dead

    @property
    def last_received(self) -> float:
        return self._last_rx

    # --- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._dead:
            if self._peer_gone and not self._lost:
                self._finish(None)
            return
        self._flush()
        self._closing = self._dead = True
        self._exc = ClosedError(f"{self.transport} link is closed")
        self._put_record((), 0, FLAG_FIN)  # after everything queued
        if not self._pending and not self._lost:
            self._finish(None)  # written at once; otherwise port_write finishes

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = self._dead = True
        if self._exc is None:
            self._exc = ClosedError(f"{self.transport} link was aborted")
        self._finish(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)

    def _protocol_violation(self, exc: Exception) -> None:
        """Tell the offender what was wrong if there is room to, then hang up."""
        if self._lost:
            return
        log.warning("closing %s: %s", self.peer.describe(), exc)
        if not self._dead:
            code = (
                ErrorCode.FRAME_TOO_LARGE if isinstance(exc, FrameTooLarge) else ErrorCode.PROTOCOL
            )
            try:
                self._flush()  # answers to the good frames before the bad one go first
                self.port_write()
                if not self._pending:
                    err = encode(Err(code, str(exc)[:1000]))
                    if self._tx.try_write_parts((err,), len(err), 0):
                        self._port.wrote()
            except (CorruptRing, ProtocolError):
                pass
        self._closing = self._dead = True
        self._finish(BrokenLinkError(f"{self.peer.describe()}: {exc}"))

    def _finish(self, exc: BaseException | None) -> None:
        """Release everything, once; tell the receiver (``exc`` None: we closed it)."""
        if self._lost:
            return
        self._lost = self._dead = True
        if exc is not None and (self._exc is None or isinstance(self._exc, BrokenLinkError)):
            self._exc = exc
        self._port.close()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._out.clear()
        self._out_bytes = 0
        self._pending.clear()
        self._pending_bytes = 0
        self._partial = None
        self._held = None
        self._decoder.release()
        for bell in self._bells:
            bell.close()
        try:
            self._ctl.close()  # the peer sees end-of-file: its side ends too
        except OSError:
            pass
        self._rx.close()
        self._tx.close()
        try:
            self._segment.close()
        except (BufferError, OSError) as err:  # pragma: no cover - freed by GC instead
            log.debug("segment of %s not released now: %s", self.peer.describe(), err)
        self._unblock_all()
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        if self._receiver is not None:
            lost = self._exc
            self._receiver.link_lost(None if isinstance(lost, ClosedError) else lost)

    def _unblock_all(self) -> None:
        self.write_blocked = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
