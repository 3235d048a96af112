"""A :class:`~asyncipc.link.Link` over one gRPC ``Connect`` stream, at either end.

The stream carries the frames of the wire protocol (``docs/protocol.md``) as protobuf
messages (``protos/asyncipc/v1/bus.proto``): the broker side (:class:`ServerLink`) is
attached to the broker as an ordinary client, the client side (:class:`ClientLink`) sits
under an ordinary :class:`~asyncipc.Bus`. Neither knows it is on gRPC.

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
import contextlib
import logging
from collections import deque
from typing import Any, Protocol

import grpc

from ..errors import BrokenLinkError, ClosedError, FrameTooLarge
from ..link import Link, LinkReceiver, PeerInfo
from ..protocol import (
    MSG_EXTRA,
    PING,
    PONG,
    PROTOCOL_VERSION,
    Err,
    ErrorCode,
    Frame,
    Headers,
    Hello,
    Msg,
    Overflow,
    Ping,
    Pong,
    Pub,
    Sub,
    Unsub,
    Welcome,
)
from ..transports import TransportOptions
from ._proto import bus_pb2 as pb

__all__ = ["BATCH_BYTES", "SLACK", "ClientLink", "GrpcLink", "ServerLink", "grpc_status"]

log = logging.getLogger("asyncipc.grpc")

BATCH_BYTES = 256 * 1024
"""At most this much goes into one stream message, unless a single frame is larger."""

SLACK = 64 * 1024
"""What gRPC's message size limits allow beyond ``max_frame``: the protobuf encoding of a
frame is a few bytes longer than the wire protocol's, and the limit must never refuse a
frame that the protocol accepts. Frames between the two are refused by the link."""

_OVERHEAD = 16  # what a queued frame is counted for beyond its strings and payload

_STATUS: dict[int, grpc.StatusCode] = {
    ErrorCode.PROTOCOL: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.FRAME_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.VERSION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.AUTH: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.HANDSHAKE_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.PEER_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.SHUTDOWN: grpc.StatusCode.UNAVAILABLE,
}

# Statuses a client turns back into the ERR they stand for (the others: a lost link).
_STATUS_ERRORS = {
    grpc.StatusCode.UNAUTHENTICATED: ErrorCode.AUTH,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorCode.FRAME_TOO_LARGE,
}


def grpc_status(code: int) -> grpc.StatusCode:
    """The gRPC status a ``Connect`` stream ends with after a fatal ERR ``code``."""
    return _STATUS.get(code, grpc.StatusCode.UNKNOWN)


# A queued message: (sid, subject, data, reply, headers); sid is 0 for a publish.
_Entry = tuple[int, str, bytes, "str | None", "Headers | None"]


def _size(subject: str, data: bytes, reply: str | None, headers: Headers | None) -> int:
    """The length of the same message as a wire-protocol frame (what max_frame bounds)."""
    n = 9 + len(subject.encode()) + len(data)  # op, two u16 string lengths, u32 headers
    if reply is not None:
        n += len(reply.encode())
    if headers:
        n += 2 + sum(6 + len(k.encode()) + len(v.encode()) for k, v in headers.items())
    return n


def _headers(pbmap: Any) -> Headers | None:
    return dict(pbmap) if pbmap else None


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
        self._out: deque[_Entry | Any] = deque()  # messages as tuples, other frames as pb
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

    def _add_message(self, batch: Any, entry: _Entry) -> None:
        raise NotImplementedError

    def _encode(self, frame: Frame) -> Any:
        """Any frame other than PUB/MSG as a pb frame; None if this end never sends it."""
        raise NotImplementedError

    def _dispatch(self, receiver: LinkReceiver, frame: Any) -> None:
        """Hand one received pb frame to the receiver."""
        raise NotImplementedError

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
                self._queue(encoded, _OVERHEAD)

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
        self._queue((0, subject, data, reply, headers), size)

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
        self._queue((sid, subject, data, reply, headers), size)

    def _queue(self, entry: Any, size: int) -> None:
        self._out.append(entry)
        self._out_bytes += size + _OVERHEAD
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
                    taken += _size(entry[1], entry[2], entry[3], entry[4]) + _OVERHEAD
                    self._add_message(batch, entry)
                else:
                    taken += _OVERHEAD * 2
                    batch.frames.append(entry)
            await self._stream.write(batch)
            self._out_bytes = max(0, self._out_bytes - taken)
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


class ServerLink(GrpcLink):
    """The broker's end of one ``Connect`` stream: a client like any other.

    ``token`` is the one the call's metadata carried: it stands in for a HELLO that
    carries none. Run it with :meth:`serve` from the RPC handler, which returns when the
    link is done; the stream then ends with the status of a fatal ERR, if one was sent.
    """

    def __init__(
        self,
        context: Any,
        options: TransportOptions,
        peer: PeerInfo,
        token: str | None,
    ) -> None:
        super().__init__(context, options, peer)
        self._context = context
        self._token = token
        self._greeted = False
        self._aborted = False
        self._fatal: Err | None = None

    def _batch(self) -> Any:
        return pb.ConnectResponse()

    def _add_message(self, batch: Any, entry: _Entry) -> None:
        m = batch.frames.add().message
        m.sid, m.subject, m.data = entry[0], entry[1], entry[2]
        if entry[3] is not None:
            m.reply_to = entry[3]
        if entry[4]:
            m.headers.update(entry[4])

    def _encode(self, frame: Frame) -> Any:
        if type(frame) is Err:
            if frame.code < 100 and self._fatal is None:
                self._fatal = frame
            return pb.ServerFrame(
                error=pb.Error(code=frame.code, message=frame.message, sid=frame.sid)
            )
        if type(frame) is Pong:
            return pb.ServerFrame(pong=self._pong_frame())
        if type(frame) is Ping:
            return pb.ServerFrame(ping=self._ping_frame())
        if type(frame) is Welcome:
            f = frame.fields
            return pb.ServerFrame(
                welcome=pb.Welcome(
                    version=f.get("version", PROTOCOL_VERSION),
                    server=f.get("server", ""),
                    server_id=f.get("server_id", ""),
                    client_id=f.get("client_id", 0),
                    max_frame=f.get("max_frame", 0),
                    ping_interval=f.get("ping_interval", 0.0),
                )
            )
        log.debug("not sending %r to a gRPC client", frame)
        return None

    def _dispatch(self, receiver: LinkReceiver, frame: Any) -> None:
        kind = frame.WhichOneof("frame")
        if not self._greeted:
            self._greeted = True
            hello = frame.hello if kind == "hello" else None
            receiver.frame_received(self._hello(hello))
            if hello is not None:
                return
        if kind == "publish":
            m = frame.publish
            receiver.frame_received(Pub(m.subject, m.data, m.reply_to or None, _headers(m.headers)))
        elif kind == "subscribe":
            s = frame.subscribe
            try:
                overflow = Overflow(s.overflow)
            except ValueError:
                self._violation(f"SUB with unknown overflow policy {s.overflow}")
                return
            receiver.frame_received(
                Sub(s.sid, s.subject, s.queue or None, overflow, s.max_pending, s.max_bytes)
            )
        elif kind == "unsubscribe":
            receiver.frame_received(Unsub(frame.unsubscribe.sid))
        elif kind == "ping":
            self._ping_ids.append(frame.ping.id)
            receiver.frame_received(PING)
        elif kind == "pong":
            receiver.frame_received(PONG)
        elif kind == "hello":
            receiver.frame_received(self._hello(frame.hello))  # refused: not first
        else:
            self._violation("a ClientFrame with no frame set")

    def _hello(self, hello: Any) -> Hello:
        fields: dict[str, Any] = {"version": PROTOCOL_VERSION, "lang": "grpc"}
        token = self._token
        if hello is not None:
            fields["version"] = hello.version or PROTOCOL_VERSION
            fields["name"] = hello.name
            if hello.lang:
                fields["lang"] = hello.lang
            if hello.max_frame:
                fields["max_frame"] = min(hello.max_frame, 1 << 62)
            token = hello.token or token
        if token is not None:
            fields["token"] = token
        return Hello(fields)

    def _violation(self, message: str) -> None:
        """Tell the client what was wrong, end the stream with INVALID_ARGUMENT."""
        log.warning("closing %s: %s", self.peer.describe(), message)
        self._out.clear()
        self._out_bytes = 0
        self._queue(self._encode(Err(ErrorCode.PROTOCOL, message)), _OVERHEAD)
        self.close()  # the writer sends the ERR, then the stream ends
        self._exc = BrokenLinkError(f"{self.peer.describe()}: {message}")
        self._tell()

    def abort(self) -> None:
        if not self._ended.is_set():
            self._aborted = True
            self._exc = self._exc or ClosedError("grpc link was aborted")
            self._finish(None)

    async def serve(self) -> None:
        """Run the stream until the link is done (the RPC handler's body).

        Cancelled when the client goes away (grpc.aio cancels the handler): the link is
        then lost like a socket whose peer vanished.
        """
        reader = asyncio.ensure_future(self._read_loop())
        reader.add_done_callback(self._task_done)
        writer = asyncio.ensure_future(self._write_loop())
        writer.add_done_callback(self._task_done)
        try:
            await self._ended.wait()
        finally:
            reader.cancel()
            writer.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            self._finish(BrokenLinkError(f"{self.peer.describe()} went away"))
            self._set_closed()
        fatal = self._fatal
        if fatal is not None:
            self._context.set_code(grpc_status(fatal.code))
            self._context.set_details(fatal.message)
        elif self._aborted:
            self._context.set_code(grpc.StatusCode.UNAVAILABLE)
            self._context.set_details("the broker dropped the stream")

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        """The reader ended (the client ended its side, or the stream broke), or the
        writer did (flushed after close(), or broke)."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._finish(BrokenLinkError(f"{self.peer.describe()}: {exc}"))
        else:
            self._finish(None)


class ClientLink(GrpcLink):
    """A Bus's end of a ``Connect`` stream; owns the call and the channel it is on."""

    def __init__(
        self,
        call: Any,
        channel: grpc.aio.Channel,
        options: TransportOptions,
        peer: PeerInfo,
    ) -> None:
        super().__init__(call, options, peer)
        self._call = call
        self._channel = channel
        self._got_error = False
        self._aborted = False
        self._main = asyncio.ensure_future(self._run())

    def _batch(self) -> Any:
        return pb.ConnectRequest()

    def _add_message(self, batch: Any, entry: _Entry) -> None:
        m = batch.frames.add().publish
        m.subject, m.data = entry[1], entry[2]
        if entry[3] is not None:
            m.reply_to = entry[3]
        if entry[4]:
            m.headers.update(entry[4])

    def _encode(self, frame: Frame) -> Any:
        if type(frame) is Sub:
            return pb.ClientFrame(
                subscribe=pb.SubscribeRequest(
                    sid=frame.sid,
                    subject=frame.subject,
                    queue=frame.queue or "",
                    overflow=pb.Overflow.Value(f"OVERFLOW_{frame.overflow.name}"),
                    max_pending=frame.max_msgs,
                    max_bytes=frame.max_bytes,
                )
            )
        if type(frame) is Unsub:
            return pb.ClientFrame(unsubscribe=pb.Unsubscribe(sid=frame.sid))
        if type(frame) is Ping:
            return pb.ClientFrame(ping=self._ping_frame())
        if type(frame) is Pong:
            return pb.ClientFrame(pong=self._pong_frame())
        if type(frame) is Hello:
            f = frame.fields
            token = f.get("token")
            return pb.ClientFrame(
                hello=pb.Hello(
                    version=f.get("version", PROTOCOL_VERSION),
                    name=f.get("name") or "",
                    token=token if isinstance(token, str) else "",
                    max_frame=f.get("max_frame") or 0,
                    lang=f.get("lang") or "",
                )
            )
        log.debug("not sending %r over gRPC", frame)
        return None

    def _dispatch(self, receiver: LinkReceiver, frame: Any) -> None:
        kind = frame.WhichOneof("frame")
        if kind == "message":
            m = frame.message
            receiver.msg_received(m.sid, m.subject, m.data, m.reply_to or None, _headers(m.headers))
        elif kind == "ping":
            self._ping_ids.append(frame.ping.id)
            receiver.frame_received(PING)
        elif kind == "pong":
            receiver.frame_received(PONG)
        elif kind == "error":
            e = frame.error
            self._got_error = True
            receiver.frame_received(Err(e.code, e.message, e.sid))
        elif kind == "welcome":
            w = frame.welcome
            receiver.frame_received(
                Welcome(
                    {
                        "version": w.version,
                        "server": w.server,
                        "server_id": w.server_id,
                        "client_id": w.client_id,
                        "max_frame": w.max_frame,
                        "ping_interval": w.ping_interval,
                    }
                )
            )

    async def _run(self) -> None:
        """The link's life: read until the broker ends the stream, then release it all."""
        writer = asyncio.ensure_future(self._writer())
        exc: BaseException | None = None
        try:
            exc = await self._read_loop()
        except grpc.aio.AioRpcError as rpc_error:
            exc = self._status_error(rpc_error)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._aborted and task is not None and task.cancelling():
                self._finish(ClosedError("grpc link was cancelled"))
                raise
            # abort(): grpc.aio raises CancelledError from the call we cancelled.
        except Exception as other:  # pragma: no cover - defensive: tell the Bus why
            exc = BrokenLinkError(f"{self.peer.describe()}: {other!r}")
        finally:
            self._finish(exc)
            if not writer.done():
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            await self._channel.close()
            self._set_closed()

    async def _writer(self) -> None:
        try:
            await self._write_loop()
            if not self._ended.is_set():
                await self._call.done_writing()
        except (grpc.aio.AioRpcError, RuntimeError, asyncio.InvalidStateError):
            pass  # the reader sees the same failure and reports it

    def _status_error(self, error: grpc.aio.AioRpcError) -> BaseException:
        """The broker ended the stream with a status: if it sent no ERR first (a refusal
        by the gRPC layer itself), the Bus gets the ERR the status stands for."""
        code = error.code()
        details = error.details() or ""
        if not self._got_error and self._receiver is not None and code in _STATUS_ERRORS:
            self._got_error = True
            self._receiver.frame_received(Err(_STATUS_ERRORS[code], details))
        return BrokenLinkError(f"{self.peer.describe()}: {code.name}: {details}")

    def abort(self) -> None:
        if not self._aborted and not self._closed_fut.done():
            self._aborted = True
            self._exc = self._exc or ClosedError("grpc link was aborted")
            self._call.cancel()
            self._finish(None)
