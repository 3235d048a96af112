"""What both ends of a gRPC ``Connect`` stream share: a Link's queue, writer, reader.

The stream carries the frames of the wire protocol (``docs/protocol.md``) as protobuf
messages (``protos/asyncipc/v1/bus.proto``). The broker's end
(:class:`~asyncipc.adapters.grpc._server_link.ServerLink`) is attached to the broker as an
ordinary client; the client's end (:class:`~asyncipc.adapters.grpc._client.ClientLink`)
sits under an ordinary :class:`~asyncipc.Bus`. Neither knows it is on gRPC.

Both ends queue what they send and let one writer coroutine hand it to gRPC, several
frames per stream message: one gRPC message costs tens of microseconds however small it
is, so a burst of publishes goes out as one. gRPC's own flow control (HTTP/2 windows) is
the channel's: ``write()`` waits while the peer does not read, the queue grows past the
high-water mark, :attr:`write_blocked` turns true and the broker's overflow policies and
``Bus.publish`` react exactly as on a socket. Reading stops while the receiver has paused
us, so the peer's writes back up the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Protocol

import grpc

from ...errors import BrokenLinkError, ClosedError, FrameTooLarge
from ...link import Link, LinkReceiver, PeerInfo
from ...protocol import (
    MSG_EXTRA,
    Frame,
    Headers,
    Msg,
    Pub,
)
from ...transports import TransportOptions
from .proto import bus_pb2 as pb

__all__ = ["BATCH_BYTES", "OVERHEAD", "SLACK", "Entry", "GrpcLink", "Malformed"]

log = logging.getLogger("asyncipc.grpc")

BATCH_BYTES = 256 * 1024
"""At most this much goes into one stream message, unless a single frame is larger."""

SLACK = 64 * 1024
"""What gRPC's message size limits allow beyond ``max_frame``: the protobuf encoding of a
frame is a few bytes longer than the wire protocol's, and the limit must never refuse a
frame that the protocol accepts. Frames between the two are refused by the link."""

OVERHEAD = 16  # what a queued frame is counted for beyond its strings and payload

# A queued message: (sid, subject, data, reply, headers, size counted); sid 0: a publish.
Entry = tuple[int, str, bytes, "str | None", "Headers | None", int]


def _size(subject: str, data: bytes, reply: str | None, headers: Headers | None) -> int:
    """The length of the same message as a wire-protocol frame (what max_frame bounds)."""
    n = 9 + len(subject.encode()) + len(data)  # op, two u16 string lengths, u32 headers
    if reply is not None:
        n += len(reply.encode())
    if headers:
        n += 2 + sum(6 + len(k.encode()) + len(v.encode()) for k, v in headers.items())
    return n


def headers_of(pbmap: Any) -> Headers | None:
    """A protobuf map as message headers (None when empty, as the protocol has it)."""
    return dict(pbmap) if pbmap else None


class Malformed:
    """What the broker's deserializers return for bytes that are not the message they
    should be: the handler answers INVALID_ARGUMENT instead of grpc.aio logging an
    exception and answering UNKNOWN."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class _Stream(Protocol):
    """What both ends have: a grpc.aio ServicerContext and a StreamStreamCall."""

    async def read(self) -> Any: ...

    async def write(self, message: Any) -> None: ...


class GrpcLink(Link):
    """The part both ends share: queue, writer, reader, flow control. See module doc."""

    transport = "grpc"

    def __init__(self, stream: _Stream, options: TransportOptions, peer: PeerInfo) -> None:
        self.peer = peer
        self.max_frame = options.max_frame
        self._stream = stream
        self._high_water = options.high_water
        self._low_water = options.high_water // 4
        self._loop = asyncio.get_running_loop()
        self._receiver: LinkReceiver | None = None
        self._out: deque[Entry | Any] = deque()  # messages as tuples, other frames as pb
        self._out_bytes = 0
        self._wake_writer = asyncio.Event()
        self._inbox: deque[Any] = deque()  # received pb frames not yet handed on
        self._can_read = asyncio.Event()
        self._can_read.set()
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._blocked_reported = False
        self._closing = False  # nothing more may be sent: close(), abort(), or the end
        self._told = False  # the receiver has heard link_lost
        self._ended = asyncio.Event()  # the stream is over: stop reading and writing
        self._exc: BaseException | None = None
        self._closed_fut: asyncio.Future[None] = self._loop.create_future()
        self._last_rx = self._loop.time()
        self._ping_ids: deque[int] = deque()  # ids of the peer's pings we owe a pong
        self._next_ping = 0

    # --- what each end does differently ---------------------------------------------

    def _batch(self) -> Any:
        """An empty stream message (ConnectRequest or ConnectResponse)."""
        raise NotImplementedError

    def _add_message(self, batch: Any, entry: Entry) -> None:
        raise NotImplementedError

    def _encode(self, frame: Frame) -> Any:
        """Any frame other than PUB/MSG as a pb frame; None if this end never sends it."""
        raise NotImplementedError

    def _dispatch(self, receiver: LinkReceiver, frame: Any) -> None:
        """Hand one received pb frame to the receiver."""
        raise NotImplementedError

    def _violation(self, message: str) -> None:
        """The peer sent something this end cannot take: end the stream."""
        self._finish(BrokenLinkError(f"{self.peer.describe()}: {message}"))

    # --- sending -----------------------------------------------------------------------

    def set_receiver(self, receiver: LinkReceiver) -> None:
        self._receiver = receiver
        self._deliver_inbox()

    def send(self, frame: Frame) -> None:
        if self._closing:
            raise self._send_error()
        if type(frame) is Pub:
            self.publish(frame.subject, frame.data, frame.reply, frame.headers)
        elif type(frame) is Msg:
            self.deliver(frame.sid, frame.subject, frame.data, frame.reply, frame.headers, None)
        else:
            encoded = self._encode(frame)
            if encoded is not None:
                self._queue(encoded)

    def publish(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        if self._closing:
            raise self._send_error()
        size = _size(subject, data, reply, headers)
        if size > self.max_frame:
            raise FrameTooLarge(
                f"PUB frame of {size} bytes exceeds the maximum frame size {self.max_frame}"
            )
        self._queue((0, subject, data, reply, headers, size + OVERHEAD))

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
        if data is None:  # the broker passes the PUB it came in instead (see Broker.publish)
            assert pub is not None
            data = pub.data
        size = _size(subject, data, reply, headers) + 4
        if size > self.max_frame + MSG_EXTRA:
            raise FrameTooLarge(
                f"message of {size} bytes exceeds the maximum frame {self.max_frame}"
            )
        self._queue((sid, subject, data, reply, headers, size + OVERHEAD))

    def _queue(self, entry: Any, counted: int = 2 * OVERHEAD) -> None:
        """Queue a message entry (counted as its last field says) or a pb frame."""
        self._out.append(entry)
        self._out_bytes += entry[5] if type(entry) is tuple else counted
        if self._out_bytes > self._high_water:
            self.write_blocked = self._blocked_reported = True
        self._wake_writer.set()

    def _send_error(self) -> Exception:
        if self._exc is not None and not isinstance(self._exc, ClosedError):
            return BrokenLinkError(str(self._exc))
        return ClosedError("grpc link is closed")

    async def _write_loop(self) -> None:
        """Hand the queue to gRPC, a batch per stream message, until closed and flushed."""
        out = self._out
        while True:
            if not out:
                if self._closing:
                    return
                self._wake_writer.clear()
                await self._wake_writer.wait()
                continue
            if self._ended.is_set():
                return
            batch = self._batch()
            cap = min(BATCH_BYTES, self.max_frame)
            taken = 0
            while out and (taken == 0 or taken < cap):
                entry = out.popleft()
                if type(entry) is tuple:
                    taken += entry[5]
                    self._add_message(batch, entry)
                else:
                    taken += 2 * OVERHEAD
                    batch.frames.append(entry)
            await self._stream.write(batch)
            # Exactly what was counted in goes out again: the count cannot drift.
            self._out_bytes = self._out_bytes - taken if out else 0
            if self.write_blocked and self._out_bytes <= self._low_water:
                self._unblocked()

    def _unblocked(self) -> None:
        self.write_blocked = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        if self._blocked_reported:
            self._blocked_reported = False
            if self._receiver is not None and not self._closing:
                self._receiver.writing_resumed()

    @property
    def buffered(self) -> int:
        return self._out_bytes

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

    # --- receiving ---------------------------------------------------------------------

    async def _read_loop(self) -> BaseException | None:
        """Read until the peer ends its side; return None for an orderly end, else why not.

        Waits before each read until everything already read has been handed on and the
        receiver has not paused us: that is how the peer's writes back up.
        """
        stream = self._stream
        while True:
            await self._can_read.wait()
            message = await stream.read()
            if message is grpc.aio.EOF:
                return None
            if type(message) is Malformed:
                self._violation(f"a ConnectRequest that does not parse: {message.error}")
                await self._ended.wait()  # the writer sends the ERR first, then ends it
                return None
            self._last_rx = self._loop.time()
            self._inbox.extend(message.frames)
            self._deliver_inbox()

    def _deliver_inbox(self) -> None:
        receiver = self._receiver
        inbox = self._inbox
        while inbox and not self._paused and receiver is not None and not self._told:
            self._dispatch(receiver, inbox.popleft())
        if inbox or self._paused:
            self._can_read.clear()
        else:
            self._can_read.set()

    def pause_reading(self) -> None:
        self._paused = True
        self._can_read.clear()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._deliver_inbox()

    @property
    def last_received(self) -> float:
        return self._last_rx

    def _ping_frame(self) -> Any:
        self._next_ping += 1
        return pb.Ping(id=self._next_ping)

    def _pong_frame(self) -> Any:
        return pb.Ping(id=self._ping_ids.popleft() if self._ping_ids else 0)

    # --- closing -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._exc = self._exc or ClosedError("grpc link is closed")
            self._wake_writer.set()  # flush what is queued, then end our side

    def _finish(self, exc: BaseException | None) -> None:
        """The stream is over: drop what is queued, release every waiter, tell the
        receiver (once). ``exc`` says why, unless we closed it ourselves first."""
        if self._exc is None:
            self._exc = exc or BrokenLinkError(f"{self.peer.describe()} closed the stream")
        self._closing = True
        self._ended.set()
        self._out.clear()
        self._out_bytes = 0
        self._inbox.clear()
        self.write_blocked = False
        self._wake_writer.set()
        self._can_read.set()
        for fut in self._drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self._drain_waiters.clear()
        self._tell()

    def _tell(self) -> None:
        if not self._told:
            self._told = True
            if self._receiver is not None:
                err = self._exc
                self._receiver.link_lost(None if isinstance(err, ClosedError) else err)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed_fut)

    def _set_closed(self) -> None:
        if not self._closed_fut.done():
            self._closed_fut.set_result(None)
