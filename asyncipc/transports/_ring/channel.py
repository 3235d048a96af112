"""A direct channel of byte records between two processes over a ring pair: no broker.

:class:`RingChannel` is the shortest path asyncipc has between two processes: no frames,
no subjects, no broker hop. One ``send`` is one ring record; ``recv`` returns a copy;
``recv_record`` hands out the record *in place* (a :class:`~._ring.Record`: zero-copy,
valid until released). A record must fit the ring (``max_record`` bytes): larger data
is refused with :class:`~asyncipc.FrameTooLarge` (use a larger ``?size=``), because a
record in pieces could not be read in place.

Closing is as for the ring link: :meth:`RingChannel.close` writes what is queued and a
``FIN`` record, then hangs up; the peer's ``recv`` delivers everything before the
``FIN``, then raises :class:`~asyncipc.BrokenLinkError` ("closed the channel"), and
``async for`` ends cleanly there. A peer that dies without a ``FIN`` is noticed through
the control socket: what it committed is still delivered, then ``recv`` raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from typing import Any

from ...errors import BrokenLinkError, ClosedError, CorruptRing, FrameTooLarge, RemoteProtocolError
from ...link import PeerInfo
from .link import CORRUPT_GRACE, Segment
from .port import DEFAULT_SPIN, Bell, RingPort
from .ring import FLAG_FIN, Record, RingReader, RingWriter
from .setup import ControlListener, Endpoint

__all__ = ["ChannelListener", "RingChannel"]

LOOK_IN_PLACE = 50e-6
"""At most this long (seconds, and never longer than ``?spin=``) a receive that finds the
ring empty looks again in place, holding the event loop, before it waits through the
loop: a reply that lands within it is returned without a future and a loop turn."""

log = logging.getLogger("asyncipc.transport")


class RingChannel:
    """One end of a direct ring channel. Get one from ``listen_channel``/``connect_channel``
    (``asyncipc.transports.shm``)."""

    def __init__(
        self,
        *,
        peer: PeerInfo,
        rx: RingReader | None,
        tx: RingWriter | None,
        bell_in: Bell,
        bell_out: Bell,
        ctl: socket.socket | None,
        segment: Segment,
        spin: float = DEFAULT_SPIN,
        fin: bool = True,
        torn: str = "raise",
    ) -> None:
        """Usually made by ``connect_channel``, ``listen_channel``, ``open_reader`` or
        ``open_writer``. ``rx``/``tx`` None: this end only writes/reads. ``fin``: close
        with a FIN record (not for durable rings, whose writer may come back).
        ``torn``: ``"raise"`` a record that fails validation, or ``"skip"`` it (logged,
        counted in ``skipped_records``)."""
        self.peer = peer
        self._rx = rx
        # The inbound ring's bytes, taken once: recv() copies a record out of it.
        self._rx_buf = rx.buffer if rx is not None else None
        # The record recv_record() handed out; the next receive waits for its release.
        self._held: Record | None = None
        self._tx = tx
        self._bells = (bell_in, bell_out)
        self._ctl = ctl
        self._segment = segment
        self._fin = fin
        self._skip_torn = torn == "skip"
        self.max_record: int = tx.max_payload if tx is not None else 0
        """The largest record :meth:`send` takes: the ring's capacity less a header."""
        self._pending: deque[tuple[Any, int, int, asyncio.Future[None]]] = deque()
        self._recv_waiter: asyncio.Future[None] | None = None
        self._closing = False
        self._lost = False
        self._peer_gone = False
        self._peer_fin = False
        self._error: BaseException | None = None
        self._corrupt_since: float | None = None
        self._loop = asyncio.get_running_loop()
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()
        self._port = RingPort(self, rx, tx, bell_in, bell_out, ctl=ctl, spin=spin)
        self._look = min(spin, LOOK_IN_PLACE)
        # Bound once: every record read in place gets it (a bound method per record
        # would be an allocation per record).
        self._record_done = self._consume_record

    @classmethod
    def from_endpoint(cls, endpoint: Endpoint, *, spin: float = DEFAULT_SPIN) -> RingChannel:
        """Both directions of a ring pair set up over a control socket."""
        return cls(
            peer=endpoint.peer,
            rx=endpoint.rx,
            tx=endpoint.tx,
            bell_in=endpoint.bell_in,
            bell_out=endpoint.bell_out,
            ctl=endpoint.ctl,
            segment=endpoint.segment,
            spin=spin,
        )

    @property
    def skipped_records(self) -> int:
        """Records that failed validation and were skipped (``torn="skip"`` only)."""
        return self._rx.skipped_records if self._rx is not None else 0

    # --- sending -------------------------------------------------------------------------

    async def send(self, data: Any) -> None:
        """Append one record (bytes-like); waits only while the ring is full."""
        if self._tx is None:
            raise RuntimeError("this end of the ring only reads")
        if self._closing or self._lost or self._peer_gone:
            raise self._send_error()
        n = len(data)
        if n > self.max_record:
            raise FrameTooLarge(
                f"record of {n} bytes exceeds this channel's ring ({self.max_record} bytes "
                "at most); use a larger ?size="
            )
        tx = self._tx
        if not self._pending:
            tail = tx.tail
            written = tx.try_write(data)
            if tx.tail != tail:
                self._port.wrote()  # the record, or a pad committed alone (see link.py)
            if written:
                return
        fut = self._loop.create_future()
        self._pending.append((data, n, 0, fut))
        self._port.poke()
        await fut

    def _send_error(self) -> Exception:
        if self._closing:
            return ClosedError("the channel is closed")
        return BrokenLinkError(str(self._error or f"{self.peer.describe()} went away"))

    # --- receiving ------------------------------------------------------------------------

    async def recv(self) -> bytes:
        """The next record, copied out of the ring."""
        rx, buf = self._rx, self._rx_buf
        if rx is None or buf is None:
            raise RuntimeError("this end of the ring only writes")
        looked = False
        while True:
            got = self._next()
            if got is not None:
                start, length, _ = got
                data = bytes(buf[start : start + length])
                rx.consume()
                self._port.consumed()
                return data
            if not looked:
                looked = True
                if self._look_in_place():
                    continue
            await self._readable()

    async def recv_record(self) -> Record:
        """The next record *in place*: use it as ``with await ch.recv_record() as rec:``.

        Its bytes stay in shared memory until it is released; the next ``recv`` before
        that raises, and any use after it raises :class:`~asyncipc.RecordReleased`.
        """
        rx, buf = self._rx, self._rx_buf
        if rx is None or buf is None:
            raise RuntimeError("this end of the ring only writes")
        looked = False
        while True:
            got = self._next()
            if got is not None:
                start, length, flags = got
                rec = Record(buf, start, length, flags, self._record_done)
                self._held = rec
                return rec
            if not looked:
                looked = True
                if self._look_in_place():
                    continue
            await self._readable()

    def _consume_record(self) -> None:
        """A record read in place was released: free its bytes, wake a waiting writer."""
        assert self._rx is not None
        self._rx.consume()
        self._port.consumed()

    def __aiter__(self) -> RingChannel:
        """``async for data in ch``: :meth:`recv` until the peer closes the channel."""
        return self

    async def __anext__(self) -> bytes:
        # A method, not an async generator: cheaper per record, and mypyc compiles it.
        try:
            return await self.recv()
        except BrokenLinkError:
            if self._peer_fin:
                raise StopAsyncIteration from None
            raise

    def _next(self) -> tuple[int, int, int] | None:
        if self._closing or self._lost:
            if self._peer_fin:
                raise BrokenLinkError(f"{self.peer.describe()} closed the channel")
            raise ClosedError("the channel is closed") if self._error is None else self._error
        rx = self._rx
        assert rx is not None
        held = self._held
        if held is not None and not held.released:
            raise RuntimeError("release the record you hold before receiving the next one")
        head = rx.head
        while True:
            try:
                got = rx.next_record()
                break
            except CorruptRing as exc:
                now = self._loop.time()
                if self._corrupt_since is None:
                    self._corrupt_since = now
                if now - self._corrupt_since < CORRUPT_GRACE and not self._peer_gone:
                    return None  # maybe not all visible yet (docs/shm.md): look again soon
                self._corrupt_since = None
                if not self._skip_torn:
                    self._fail(exc)
                    raise
                skipped = rx.skip_corrupt()
                log.warning("skipped %d bytes of %s: %s", skipped, self.peer.describe(), exc)
        self._corrupt_since = None
        if got is None:
            if rx.head != head:
                self._port.consumed()  # pads or a skipped record freed space
            if self._peer_gone:
                self._fail(
                    BrokenLinkError(f"{self.peer.describe()} went away without closing the channel")
                )
                raise self._error  # type: ignore[misc]
            return None
        if got[2] & FLAG_FIN:
            rx.consume()
            self._peer_fin = True
            self._finish()
            raise BrokenLinkError(f"{self.peer.describe()} closed the channel")
        return got

    def _look_in_place(self) -> bool:
        """The ring was empty: look again for up to ``self._look`` seconds without
        leaving this call (once per receive, so it never holds the loop longer). True if
        something arrived (or the peer went: ``_next`` says what)."""
        if self._look <= 0:
            return False
        rx = self._rx
        assert rx is not None
        clock = time.perf_counter
        deadline = clock() + self._look
        while clock() < deadline:
            try:
                if rx.has_data():
                    return True
            except CorruptRing:
                return True
            if self._peer_gone:
                return True
        return False

    async def _readable(self) -> None:
        fut = self._recv_waiter = self._loop.create_future()
        self._port.poke()
        try:
            await fut
        finally:
            self._recv_waiter = None

    # --- the port's questions -----------------------------------------------------------------

    @property
    def port_reading(self) -> bool:
        """PortOwner (package-internal): True while inbound records are wanted."""
        return self._recv_waiter is not None and not self._lost

    @property
    def port_writes_waiting(self) -> bool:
        """PortOwner (package-internal): True while writes wait for ring space."""
        return bool(self._pending) and not self._lost

    def port_read(self, limit: int) -> int:
        """PortOwner (package-internal): handle up to ``limit`` records; how many."""
        waiter = self._recv_waiter
        if waiter is None or waiter.done() or self._rx is None:
            return 0
        try:
            ready = self._rx.has_data() or self._peer_gone
        except CorruptRing:
            ready = True  # recv() meets it and names it
        if ready:
            waiter.set_result(None)
            return 1
        return 0

    def port_write(self) -> bool:
        """PortOwner (package-internal): queued writes into the ring; True if any went."""
        tx = self._tx
        assert tx is not None
        tail = tx.tail
        pending = self._pending
        wrote = fin = False
        while pending:
            data, _, flags, fut = pending[0]
            if fut.cancelled():
                pending.popleft()
                continue
            try:
                written = tx.try_write(data, flags)
            except CorruptRing as exc:  # the peer scribbled on its head
                self._fail(exc)
                return False
            if not written:
                break
            pending.popleft()
            fut.set_result(None)
            wrote = True
            fin = bool(flags & FLAG_FIN) or (self._closing and not pending)
        if tx.tail != tail:
            self._port.wrote()
        if wrote and fin:
            self._finish()
        return wrote

    def port_peer_gone(self, problem: str | None) -> None:
        """PortOwner (package-internal): the control socket ended or carried garbage."""
        if self._lost:
            return
        if problem is not None:
            self._fail(RemoteProtocolError(problem))
            return
        self._peer_gone = True
        if self._closing:
            self._finish()
            return
        self._error = BrokenLinkError(f"{self.peer.describe()} went away")
        for *_, fut in self._pending:
            if not fut.done():
                fut.set_exception(BrokenLinkError(f"{self.peer.describe()} went away"))
        self._pending.clear()
        if self._recv_waiter is not None and not self._recv_waiter.done():
            self._recv_waiter.set_result(None)  # recv() drains what it committed, then raises

    # --- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Finish sending what is queued, then a FIN (unless this ring has none), then let
        go of everything (see the module doc)."""
        if self._closing or self._lost:
            return
        self._closing = True
        if self._peer_gone or self._tx is None:
            self._finish()
            return
        if not self._fin:
            if not self._pending:
                self._finish()  # else port_write finishes after the last record
            return
        tail = self._tx.tail
        written = not self._pending and self._tx.try_write(b"", FLAG_FIN)
        if self._tx.tail != tail:
            self._port.wrote()
        if written:
            self._finish()
            return
        self._pending.append((b"", 0, FLAG_FIN, self._loop.create_future()))
        self._port.poke()

    def abort(self) -> None:
        """Hang up at once; the peer sees a channel that broke."""
        self._closing = True
        self._finish()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)

    async def aclose(self) -> None:
        """:meth:`close` and wait until it is done."""
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> RingChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _fail(self, exc: BaseException) -> None:
        if self._lost:
            return
        log.warning("closing channel with %s: %s", self.peer.describe(), exc)
        self._error = exc
        self._finish()

    def _finish(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._port.close()
        error = self._error or ClosedError("the channel is closed")
        for *_, fut in self._pending:
            if not fut.done():
                fut.set_exception(error if not self._closing else ClosedError("closed"))
        self._pending.clear()
        if self._recv_waiter is not None and not self._recv_waiter.done():
            self._recv_waiter.set_result(None)
        for bell in self._bells:
            bell.close()
        if self._ctl is not None:
            with contextlib.suppress(OSError):
                self._ctl.close()
        if self._rx is not None:
            try:
                if self._held is not None:
                    self._held.invalidate()  # not consumed: a durable ring keeps it
                self._rx.close()
            except BufferError as exc:
                log.warning("a record of the channel is still exported: %s", exc)
        if self._tx is not None:
            self._tx.close()
        try:
            self._segment.close()
        except (BufferError, OSError) as exc:  # a view still exported: freed by GC later
            log.debug("channel segment not released now: %s", exc)
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)


class ChannelListener:
    """Channels arriving on a ``listen_channel`` URL, in order: ``await accept()``."""

    control: ControlListener

    def __init__(self) -> None:
        self._queue: asyncio.Queue[RingChannel] = asyncio.Queue()

    @property
    def url(self) -> str:
        return self.control.url

    def put(self, channel: RingChannel) -> None:
        self._queue.put_nowait(channel)

    async def accept(self) -> RingChannel:
        """The next peer's channel (waits for one to connect)."""
        return await self._queue.get()

    async def aclose(self) -> None:
        """Stop listening; channels not accepted yet are aborted."""
        await self.control.aclose()
        while not self._queue.empty():
            self._queue.get_nowait().abort()

    async def __aenter__(self) -> ChannelListener:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
