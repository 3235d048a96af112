"""The Link over a datagram socket: one frame per datagram, best effort (``udp://``).

The envelope (header, sequence numbers, acknowledgements) is the sans-I/O
:mod:`asyncipc.protocol.datagram`; the socket is :mod:`.sockets`. A
:class:`DatagramLink` is one peer: a client's own socket, or one address among many on a
broker's listening socket.

Nothing is retransmitted: a datagram that is lost stays lost, and is counted. What the
link does promise is not to *cause* loss: it keeps at most a window of datagrams that the
peer has not acknowledged in flight, so a slow or paused receiver holds the sender back
(``write_blocked``) instead of overflowing its socket buffer. See ``docs/transports.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from ...errors import BrokenLinkError, ClosedError, FrameTooLarge, ProtocolError
from ...link import Link, LinkReceiver, PeerInfo
from ...protocol import Frame, Headers, Hello, Op, Pub, Welcome, encode
from ...protocol.datagram import (
    ACK_REQ,
    DATAGRAM_OVERHEAD,
    FIN,
    RESET,
    Arrival,
    Envelope,
    SequenceTracker,
    decode_frame,
    pack_header,
    seq_after,
)
from ...protocol.frames import encode_delivery
from .. import TransportOptions
from .sockets import DatagramSocket, DatagramStats

__all__ = ["DatagramLink"]

ACK_DELAY = 0.01
"""Seconds a receiver may sit on an acknowledgement nobody asked for yet. The sender asks
(ACK_REQ) once half its window is in flight, so this only matters for a trickle."""
PROBE_DELAY = 0.05
"""Seconds a stalled sender waits for an acknowledgement before it probes; doubled after
each unanswered probe, up to :data:`PROBE_MAX`."""
PROBE_MAX = 1.0
HELLO_RETRY = 0.25
"""Seconds before a client sends its HELLO again if the broker has not answered (the HELLO
or the WELCOME may be lost); doubled each time, up to 2 s, until connect_timeout."""
LINGER = 10.0
"""Seconds a closing link keeps trying to hand its queue to a peer that does not
acknowledge, before it gives up (as a TCP socket's linger)."""


class DatagramLink(Link):
    """One peer over a :class:`DatagramSocket`; see the module docstring.

    ``addr`` is None on a connected (client) socket. ``conn`` is the connection id that
    every datagram of this link carries both ways.
    """

    def __init__(
        self,
        endpoint: DatagramSocket[DatagramLink],
        addr: Any,
        conn: int,
        options: TransportOptions,
        *,
        server_side: bool,
        peer: PeerInfo,
    ) -> None:
        settings = endpoint.settings
        self.transport = peer.transport
        self.stats = DatagramStats()
        self.peer = PeerInfo(peer.transport, peer.address, extra={"stats": self.stats})
        self.endpoint = endpoint
        self.addr = addr
        self.conn = conn
        self.server_side = server_side
        # The datagram bounds every frame, whatever the options say: a MSG must fit whole.
        self._limit = min(options.max_frame, settings.max_datagram - DATAGRAM_OVERHEAD)
        self._max_frame = self._limit
        self._high_water = options.high_water
        self._low_water = options.high_water // 4
        self._window = max(1, settings.window)
        self._window_bytes = max(1, settings.window_bytes)
        self._loop = asyncio.get_running_loop()
        self._receiver: LinkReceiver | None = None
        # Sending: frames wait in _outbox until the window lets them go.
        self._outbox: deque[bytes] = deque()
        self._outbox_bytes = 0
        self._next_seq = 1
        self._unacked: deque[tuple[int, int]] = deque()  # (seq, bytes) in flight
        self._unacked_bytes = 0
        self._peer_ack = 0
        self._stalled = False
        self._probe_timer: asyncio.TimerHandle | None = None
        self._probe_delay = PROBE_DELAY
        # Receiving: frames wait in _inbox while we are paused (or have no receiver).
        self.tracker = SequenceTracker()
        self._inbox: deque[tuple[Frame, int]] = deque()
        self._inbox_bytes = 0
        self._inbox_max = 4 * self._window
        self._inbox_max_bytes = 4 * self._window_bytes + settings.max_datagram
        self._paused = False
        self._acked = 0  # what we acknowledge: everything up to it was handed on (or lost)
        self._ack_sent = 0
        self._ack_asked = False
        self._ack_timer: asyncio.TimerHandle | None = None
        self._fin_pending = False
        # Handshake: a client repeats its HELLO, a broker its answer, until heard.
        self._hello: list[bytes] | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self._hello_delay = HELLO_RETRY
        self._first_answer: list[bytes] | None = None
        self._heard = server_side
        # Life.
        self._closing = False
        self._finished = False
        self._exc: BaseException | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()
        self._last_rx = self._last_any = self._loop.time()

    # --- Link: the frame budget ---------------------------------------------------------

    @property
    def max_frame(self) -> int:
        """The largest frame we send: never more than a datagram holds, whatever the peer
        announced (the session and the bus set this from the handshake)."""
        return self._max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._max_frame = min(value, self._limit)

    @property
    def last_received(self) -> float:
        return self._last_rx

    @property
    def last_activity(self) -> float:
        """Event-loop time of the last datagram of any kind from the peer."""
        return self._last_any

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def buffered(self) -> int:
        return self._outbox_bytes

    # --- sending ------------------------------------------------------------------------

    def set_receiver(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        self._deliver_inbox()

    def send(self, frame: Frame) -> None:
        if self._closing:
            raise self._send_error()
        if type(frame) is Hello or type(frame) is Welcome:
            frame = self._announce(frame)
        self._queue(encode(frame, self._max_frame), hello=type(frame) is Hello)

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
        self._queue(encode_delivery(sid, subject, data, reply, headers, pub, self._max_frame))

    def _announce(self, frame: Hello | Welcome) -> Hello | Welcome:
        """A HELLO or WELCOME announces the largest frame this side accepts: cap it at
        what a datagram holds. The session and the bus know nothing of datagrams; this
        keeps them so (the broker's WELCOME says max_frame, the client's HELLO too)."""
        announced = frame.fields.get("max_frame")
        if isinstance(announced, int) and announced > self._limit:
            return type(frame)({**frame.fields, "max_frame": self._limit})
        return frame

    def _queue(self, data: bytes, *, hello: bool = False) -> None:
        if hello and not self.server_side:
            self._hello = [b"", data]  # its header is made when it is first sent
        self._outbox.append(data)
        self._outbox_bytes += len(data)
        if len(self._outbox) == 1 and not self.write_blocked:
            self._flush()  # at once: no frame waits for the next turn of the loop
        if self._outbox_bytes > self._high_water:
            self.write_blocked = True

    def socket_writable(self) -> None:
        """The socket's buffer has room again: send what the window allows.

        Package-internal: :class:`DatagramSocket` calls it for each link whose datagram
        it refused while full (not on the hot path: once per drained buffer).
        """
        self._flush()

    def _flush(self) -> None:
        """Send from the outbox while the window allows. (The hot path of sending: one
        datagram per frame, so it avoids every call it can.)"""
        outbox = self._outbox
        if self._finished:
            return
        endpoint, stats, unacked = self.endpoint, self.stats, self._unacked
        window, window_bytes, conn, addr = self._window, self._window_bytes, self.conn, self.addr
        while outbox:
            data = outbox[0]
            size = len(data)
            n = len(unacked)
            in_flight = self._unacked_bytes + size
            if n and (n >= window or in_flight > window_bytes):
                if not self._stalled:
                    self._stalled = True
                    stats.window_stalls += 1
                    self._arm_probe()
                break
            seq = self._next_seq
            # Half the window is out: acknowledge soon, please.
            flags = ACK_REQ if (n + 1) * 2 >= window or in_flight * 2 >= window_bytes else 0
            header = pack_header(flags, conn, seq, self._acked)
            try:
                if not endpoint.send([header, data], addr, self):
                    break  # the socket buffer is full; _flush runs again when it drains
            except OSError as exc:
                if self._send_failed(exc):
                    return
            else:
                stats.sent += 1
            self._ack_sent = self._acked
            self._ack_asked = False
            if self._ack_timer is not None:
                self._ack_timer.cancel()
                self._ack_timer = None
            outbox.popleft()
            self._outbox_bytes -= size
            self._next_seq = (seq + 1) & 0xFFFFFFFF
            unacked.append((seq, size))
            self._unacked_bytes = in_flight
            if seq == 1:
                if self._hello is not None and self._hello[1] is data:
                    self._hello[0] = header
                    self._arm_hello()
                elif self.server_side:
                    self._first_answer = [header, data]
        if self.write_blocked and self._outbox_bytes <= self._low_water:
            # Not from inside send(): _queue only flushes while write_blocked is false.
            self.write_blocked = False
            self._wake_drainers()
            if self._receiver is not None and not self._closing:
                self._receiver.writing_resumed()
        if self._closing and not outbox:
            self._finish(fin=True)

    def _send_failed(self, exc: OSError) -> bool:
        """A send error. True when it broke the link; else the datagram counts as sent
        and lost (the receiver will see the gap)."""
        if isinstance(exc, ConnectionRefusedError):
            self.fail(BrokenLinkError(f"{self.peer.describe()}: connection refused"))
            return True
        self.stats.send_errors += 1
        self.endpoint.log.warning(
            "send", "udp datagram to %s not sent: %s", self.peer.describe(), exc
        )
        return False

    def _control(self, flags: int) -> None:
        """A datagram without a frame: an acknowledgement, a probe, a FIN."""
        header = pack_header(flags, self.conn, self._next_seq - 1, self._acked)
        try:
            self.endpoint.send([header], self.addr)
        except OSError as exc:
            if not isinstance(exc, ConnectionRefusedError):
                self.stats.send_errors += 1
            return
        self._ack_sent_now()

    def _ack_sent_now(self) -> None:
        self._ack_sent = self._acked
        self._ack_asked = False
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def _ack_received(self, ack: int) -> None:
        if not seq_after(ack, self._peer_ack) or seq_after(ack, self._next_seq - 1):
            return  # old, or a number we never sent
        self._peer_ack = ack
        unacked = self._unacked
        while unacked and not seq_after(unacked[0][0], ack):
            self._unacked_bytes -= unacked.popleft()[1]
        self._first_answer = None  # the client has our WELCOME (or ERR)
        if self._stalled:
            self._stalled = False
            self._probe_delay = PROBE_DELAY
            if self._probe_timer is not None:
                self._probe_timer.cancel()
                self._probe_timer = None
        if self._outbox:
            self._flush()

    def _arm_probe(self) -> None:
        if self._probe_timer is None and not self._finished:
            self._probe_timer = self._loop.call_later(self._probe_delay, self._probe)

    def _probe(self) -> None:
        """Stalled and nothing heard: ask where the peer is. A peer that is not paused
        answers with an acknowledgement that also covers what was lost on the way."""
        self._probe_timer = None
        if not self._stalled or self._finished:
            return
        self.stats.probes += 1
        self._control(ACK_REQ)
        self._probe_delay = min(self._probe_delay * 2, PROBE_MAX)
        self._arm_probe()

    def _arm_hello(self) -> None:
        if self._hello_timer is None and not self._finished:
            self._hello_timer = self._loop.call_later(self._hello_delay, self._resend_hello)

    def _resend_hello(self) -> None:
        self._hello_timer = None
        if self._heard or self._finished or self._hello is None:
            return
        with contextlib.suppress(OSError):
            self.endpoint.send(self._hello, self.addr)
        self._hello_delay = min(self._hello_delay * 2, 2.0)
        self._arm_hello()

    # --- receiving ----------------------------------------------------------------------

    def envelope_received(self, env: Envelope) -> None:
        """A datagram for this link (its connection id already checked)."""
        if self._finished:
            return
        self._last_any = self._loop.time()
        flags = env.flags
        if flags & RESET:
            if not self._heard:
                # The broker has not seen our HELLO yet (lost, or overtaken by what we
                # sent after it): the HELLO we repeat will start the session.
                return
            self.fail(
                BrokenLinkError(
                    f"{self.peer.describe()} does not know this connection "
                    "(the broker restarted, or timed this client out)"
                )
            )
            return
        if not self._heard:
            self._heard = True
            self._hello = None
            if self._hello_timer is not None:
                self._hello_timer.cancel()
                self._hello_timer = None
        self._ack_received(env.ack)
        if env.frame:
            self._frame_datagram(env)
        else:
            self.tracker.skip_to(env.seq)  # it carries the last number the peer used
            self._sync_stats()
        if flags & ACK_REQ:
            self._ack_asked = True
        if flags & FIN:
            self._fin_pending = True
        self._caught_up()

    def _frame_datagram(self, env: Envelope) -> None:
        stats, tracker, seq = self.stats, self.tracker, env.seq
        if seq == (tracker.highest + 1) & 0xFFFFFFFF:
            tracker.highest = seq  # in order: nothing to count (the common case, inlined)
            arrival = Arrival.NEXT
        else:
            arrival = tracker.arrived(seq)
            self._sync_stats()
        if arrival is Arrival.DUPLICATE:
            if env.seq == 1 and env.frame[4] == Op.HELLO and self._first_answer is not None:
                # Our WELCOME was lost and the client asks again.
                with contextlib.suppress(OSError):
                    self.endpoint.send(self._first_answer, self.addr)
            return
        stats.received += 1
        try:
            frame = decode_frame(env.frame, self._limit)
        except FrameTooLarge as exc:
            stats.oversized += 1
            self.endpoint.log.warning(
                "frame", "dropped a frame from %s: %s", self.peer.describe(), exc
            )
            return
        except ProtocolError as exc:
            stats.malformed += 1
            self.endpoint.log.warning(
                "frame", "dropped a malformed frame from %s: %s", self.peer.describe(), exc
            )
            return
        if self._closing:
            return  # we are leaving: read nothing more, as a closed socket would
        if self._paused or self._inbox or self._receiver is None:
            size = len(env.frame)
            if (
                len(self._inbox) >= self._inbox_max
                or self._inbox_bytes + size > self._inbox_max_bytes
            ):
                stats.overruns += 1
                return
            self._inbox.append((frame, size))
            self._inbox_bytes += size
            return
        self._last_rx = self._last_any
        # Acknowledged before it is handled, so that an answer it causes carries the
        # acknowledgement and no separate datagram is needed.
        self._acked = self.tracker.highest
        self._receiver.frame_received(frame)

    def _sync_stats(self) -> None:
        tracker, stats = self.tracker, self.stats
        stats.lost = tracker.lost
        stats.reordered = tracker.reordered
        stats.duplicates = tracker.duplicates

    def _caught_up(self) -> None:
        """After a datagram or a resume: acknowledge what was handed on, and act on a FIN
        once everything before it was read."""
        if self._finished:
            return
        if not self._paused and not self._inbox:
            self._acked = self.tracker.highest
            if self._fin_pending:
                self.fail(BrokenLinkError(f"{self.peer.describe()} closed the connection"))
                return
        if self._acked != self._ack_sent and self._ack_timer is None and not self._ack_asked:
            self._ack_timer = self._loop.call_later(ACK_DELAY, self._send_ack)

    def batch_done(self) -> None:
        """The endpoint read a batch: answer what asked for an acknowledgement. A paused
        link answers too (with the number it stopped at): the sender learns we are alive
        but not reading, as TCP's zero-window answer to a probe."""
        if self._ack_asked and not self._finished:
            self._control(0)

    def _send_ack(self) -> None:
        self._ack_timer = None
        if not self._finished and self._acked != self._ack_sent:
            self._control(0)

    def _deliver_inbox(self) -> None:
        inbox, receiver = self._inbox, self._receiver
        if receiver is None:
            return
        while inbox and not self._paused and not self._closing:
            frame, size = inbox.popleft()
            self._inbox_bytes -= size
            self._last_rx = self._loop.time()
            receiver.frame_received(frame)
        self._caught_up()
        if not self._paused and self._acked != self._ack_sent and not self._finished:
            self._control(0)  # a sender may be stalled on us: tell it at once

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._deliver_inbox()

    # --- backpressure -------------------------------------------------------------------

    async def drain(self) -> None:
        while self.write_blocked:
            if self._closing:
                raise self._send_error()
            fut = self._loop.create_future()
            self._drain_waiters.append(fut)
            await fut
        if self._closing and self._exc is not None and not isinstance(self._exc, ClosedError):
            raise self._send_error()

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _send_error(self) -> Exception:
        if self._exc is not None and not isinstance(self._exc, ClosedError):
            return BrokenLinkError(str(self._exc))
        return ClosedError(f"{self.transport} link is closed")

    # --- closing ------------------------------------------------------------------------

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._exc = self._exc or ClosedError(f"{self.transport} link is closed")
        if not self._outbox:
            self._finish(fin=True)
        else:
            self._linger = self._loop.call_later(LINGER, self.abort)

    def abort(self) -> None:
        if self._finished:
            return
        self._closing = True
        self._exc = self._exc or ClosedError(f"{self.transport} link was aborted")
        self._finish(fin=True)

    def fail(self, exc: BaseException, *, fin: bool = False) -> None:
        """End the link with ``exc``: the peer left, was replaced or went silent, or the
        channel broke. ``fin`` tells the peer too.

        Package-internal: called by the link itself and by the socket that carries it
        (``udp.py``), which is who learns of a refused port, a replaced connection or an
        idle peer.
        """
        if self._finished:
            return
        if self._exc is None or (isinstance(self._exc, ClosedError) and not self._closing):
            self._exc = exc
        self._closing = True
        self._finish(fin=fin)

    def _finish(self, *, fin: bool) -> None:
        if self._finished:
            return
        if fin:
            self._control(FIN)
        self._finished = True
        for timer in (self._probe_timer, self._ack_timer, self._hello_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._probe_timer = self._ack_timer = self._hello_timer = self._linger = None
        self._outbox.clear()
        self._outbox_bytes = 0
        self._inbox.clear()
        self.write_blocked = False
        self._wake_drainers()
        self.endpoint.forget(self)
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
        if self._receiver is not None:
            err = self._exc
            # Later, as a stream's connection_lost: not from inside the caller's close().
            self._loop.call_soon(
                self._receiver.link_lost, None if isinstance(err, ClosedError) else err
            )

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)
