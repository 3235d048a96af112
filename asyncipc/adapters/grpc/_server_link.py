"""The broker's end of a gRPC ``Connect`` stream: a client like one on a socket.

:class:`ServerLink` turns the stream's ``ClientFrame`` messages into the wire protocol's
frames for the broker's session, and the session's frames into ``ServerFrame`` messages.
A stream may start without a ``hello``: the link then greets the broker on the client's
behalf, with the token from the call's metadata. A fatal ERR ends the stream with the
gRPC status :func:`grpc_status` maps it to (``docs/grpc.md``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import grpc

from ..._logsafe import peer_log
from ...errors import BrokenLinkError, ClosedError
from ...link import LinkReceiver, PeerInfo
from ...protocol import (
    PING,
    PONG,
    PROTOCOL_VERSION,
    Err,
    ErrorCode,
    Frame,
    Hello,
    Overflow,
    Ping,
    Pong,
    Pub,
    Sub,
    Unsub,
    Welcome,
)
from ...transports import TransportOptions
from ._link import Entry, GrpcLink, headers_of
from .proto import bus_pb2 as pb

__all__ = ["ServerLink", "grpc_status"]

log = logging.getLogger("asyncipc.grpc")

_STATUS: dict[int, grpc.StatusCode] = {
    ErrorCode.PROTOCOL: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.FRAME_TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.VERSION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.AUTH: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.HANDSHAKE_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.PEER_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.SHUTDOWN: grpc.StatusCode.UNAVAILABLE,
}


def grpc_status(code: int) -> grpc.StatusCode:
    """The gRPC status a ``Connect`` stream ends with after a fatal ERR ``code``."""
    return _STATUS.get(code, grpc.StatusCode.UNKNOWN)


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
        basic: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(context, options, peer)
        self._context = context
        self._token = token
        self._basic = basic  # user and password from 'authorization: Basic' metadata
        self._greeted = False
        self._aborted = False
        self._fatal: Err | None = None

    def _batch(self) -> Any:
        return pb.ConnectResponse()

    def _add_message(self, batch: Any, entry: Entry) -> None:
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
                    client_max_frame=f.get("client_max_frame", 0),
                    high_water=f.get("high_water", 0),
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
            receiver.frame_received(
                Pub(m.subject, m.data, m.reply_to or None, headers_of(m.headers))
            )
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
        # docs/grpc.md: without hello.max_frame, the broker's maximum bounds what a gRPC
        # client receives (gRPC's own message limits are set from it), so say so: the
        # wire protocol's session would hold a silent client to the 8 MiB default.
        fields: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "lang": "grpc",
            "max_frame": self.max_frame,
        }
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
        if self._basic is not None:
            fields["user"], fields["password"] = self._basic
        return Hello(fields)

    def _violation(self, message: str) -> None:
        """Tell the client what was wrong, end the stream with INVALID_ARGUMENT."""
        peer_log().warning("bad-frame", "closing %s: %s", self.peer.describe(), message, logger=log)
        self._out.clear()
        self._out_bytes = 0
        self._queue(self._encode(Err(ErrorCode.PROTOCOL, message)))
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

        The reader and the writer are tasks of a task group of this call: once the
        link is done, cancelling the group's scope stops both, and the group returns
        only when they have ended (an anyio task group: asyncio.TaskGroup has no scope
        to cancel as a whole). A cancellation of this call cancels them and is raised.
        """
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._half, self._read_loop, name="asyncipc grpc reader")
                group.start_soon(self._half, self._write_loop, name="asyncipc grpc writer")
                await self._ended.wait()
                group.cancel_scope.cancel()
        finally:
            self._finish(BrokenLinkError(f"{self.peer.describe()} went away"))
            self._set_closed()
        fatal = self._fatal
        if fatal is not None:
            self._context.set_code(grpc_status(fatal.code))
            self._context.set_details(fatal.message)
        elif self._aborted:
            self._context.set_code(grpc.StatusCode.UNAVAILABLE)
            self._context.set_details("the broker dropped the stream")

    async def _half(self, loop: Callable[[], Awaitable[object]]) -> None:
        """Run the reader or the writer; when it ends (the client ended its side, the
        writer flushed after close(), or the stream broke), the link is done."""
        try:
            await loop()
        except Exception as exc:
            self._finish(BrokenLinkError(f"{self.peer.describe()}: {exc}"))
        else:
            self._finish(None)
