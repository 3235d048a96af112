"""The broker's side of the gRPC adapter: the ``asyncipc.v1.Bus`` service.

Every RPC becomes an ordinary client of the broker. A ``Connect`` stream is a
:class:`ServerLink` handed to ``Broker.attach``; ``Subscribe``, ``Publish`` and
``Request`` go through in-process :class:`~asyncipc.Bus` objects on memory links, so that
the broker treats them (subject checks, flow control, no-responders) exactly as any
other client; the service checks their token against the broker's first. The mapping
of what goes wrong to gRPC status codes lives here (:func:`status_of`,
:func:`grpc_status`) and is documented in ``docs/grpc.md``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..client import DEFAULT_MAX_BYTES, DEFAULT_MAX_PENDING, Bus
from ..errors import (
    AsyncIPCError,
    AuthenticationError,
    BrokenLinkError,
    ClosedError,
    ConfigurationError,
    ConnectionClosed,
    FrameTooLarge,
    HandshakeError,
    NoResponders,
    RequestTimeout,
    ServiceError,
    SlowConsumer,
)
from ..link import Accept, LinkReceiver, PeerInfo
from ..message import Message
from ..options import ConnectOptions
from ..protocol import (
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
from ..subjects import validate_pattern, validate_queue
from ..transports import TransportOptions
from ..transports.memory import memory_pair
from ._grpc_link import Entry, GrpcLink, Malformed, headers_of
from ._proto import bus_pb2 as pb

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "SERVICE",
    "BusService",
    "ServerLink",
    "add_bus_service",
    "grpc_status",
    "status_of",
]

log = logging.getLogger("asyncipc.grpc")

SERVICE = "asyncipc.v1.Bus"
"""The full name of the service, as health checks and reflection know it."""

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds a ``Request`` call without a deadline waits for its reply."""

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


_NAMES = {
    policy: name
    for name, policy in {
        "block": Overflow.BLOCK,
        "drop_oldest": Overflow.DROP_OLDEST,
        "drop_new": Overflow.DROP_NEW,
        "error": Overflow.ERROR,
    }.items()
}

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (FrameTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ConfigurationError, grpc.StatusCode.INVALID_ARGUMENT),  # InvalidSubject is one
    (NoResponders, grpc.StatusCode.UNAVAILABLE),
    (RequestTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ServiceError, grpc.StatusCode.UNKNOWN),
    (SlowConsumer, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (HandshakeError, grpc.StatusCode.UNAVAILABLE),
    (ConnectionClosed, grpc.StatusCode.UNAVAILABLE),
    (AsyncIPCError, grpc.StatusCode.UNAVAILABLE),  # BrokerError: shutting down
]


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status a unary or ``Subscribe`` call ends with when ``exc`` stops it."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


class _Refused(Exception):
    """A call refused before it reached the bus: its status and details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


def _token(context: Any) -> str | None:
    """The ``authorization: Bearer <token>`` of the call's metadata, if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _Refused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "authorization metadata must be 'Bearer <token>'",
                )
            return token.strip()
    return None


class _InternalBus(Bus):
    """A Bus the adapter holds for gRPC callers. When the broker shuts down and closes
    it, that is the end of its life, not a lost connection worth a warning in the
    broker's own log."""

    def link_lost(self, exc: BaseException | None) -> None:
        closing, self._closing = self._closing, True  # what Bus.link_lost logs by
        try:
            super().link_lost(exc)
        finally:
            self._closing = closing  # close() must still run in full


class BusService:
    """The ``asyncipc.v1.Bus`` service of one broker (see the module docstring).

    Unary and ``Subscribe`` calls are checked against the broker's token here, then go
    through in-process buses that present it; a ``Connect`` stream presents the caller's
    token in its HELLO and the broker checks it as for any client.
    """

    def __init__(
        self, accept: Accept, options: TransportOptions, url: str, token: str | None
    ) -> None:
        self._accept = accept
        self._options = options
        self._url = url
        self._token = token
        self._lock = asyncio.Lock()
        self._unary: Bus | None = None  # the one Publish and Request share

    def _authorize(self, context: Any) -> None:
        """Refuse the call unless it carries the broker's token (when it has one)."""
        expected = self._token
        if expected is None:
            return
        token = _token(context)
        if token is None:
            raise _Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "token required: send the metadata 'authorization: Bearer <token>'",
            )
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "invalid token")

    async def _bus(self, who: str) -> Bus:
        """A new in-process Bus, attached to the broker like any client. Its link says
        ``grpc`` with the caller's address: the broker counts it as gRPC and never takes
        it for one of its own in-process clients (which may ask to signal local ones)."""
        client, server = memory_pair("grpc", self._options)
        server.transport = "grpc"
        server.peer = PeerInfo("grpc", who)
        self._accept(server)
        options = ConnectOptions(
            name=f"grpc {who}", token=self._token, max_frame=self._options.max_frame
        )
        bus = _InternalBus(client, options, self._url)
        try:
            await bus._handshake()
        except BaseException:
            client.abort()
            raise
        return bus

    async def _unary_bus(self, context: Any) -> Bus:
        self._authorize(context)
        bus = self._unary
        if bus is None or bus.is_closed:
            async with self._lock:  # one handshake, however many calls arrive at once
                if self._unary is None or self._unary.is_closed:
                    self._unary = await self._bus("unary calls")
                bus = self._unary
        return bus

    async def close(self) -> None:
        """Close the bus the unary calls share (the broker has closed its link by now)."""
        if self._unary is not None:
            await self._unary.close()

    # --- the RPCs ----------------------------------------------------------------------

    async def Publish(self, request: Any, context: Any) -> Any:
        """Publish one message through the shared in-process bus."""
        try:
            _check(request)
            bus = await self._unary_bus(context)
            await bus.publish(
                request.subject,
                request.data,
                headers=dict(request.headers) or None,
                reply_to=request.reply_to or None,
            )
        except (AsyncIPCError, _Refused) as exc:
            await _abort(context, exc)
        return pb.PublishResponse()

    async def Request(self, request: Any, context: Any) -> Any:
        """Ask through the shared in-process bus; the call's deadline is the time-out."""
        timeout = context.time_remaining()
        try:
            _check(request)
            bus = await self._unary_bus(context)
            reply = await bus.request(
                request.subject,
                request.data,
                headers=dict(request.headers) or None,
                timeout=DEFAULT_REQUEST_TIMEOUT if timeout is None else max(timeout, 0.0),
            )
        except (AsyncIPCError, _Refused) as exc:
            await _abort(context, exc)
        if reply.headers and reply.headers.get("asyncipc-status") == "403":
            # The broker refused a request to a reserved subject (protocol.md §12).
            why = reply.headers.get("asyncipc-error", "refused")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)
        return _message(reply)

    async def Subscribe(self, request: Any, context: Any) -> None:
        """Stream a subscription of an in-process bus of this call's own."""
        try:
            _check(request)
            self._authorize(context)
            validate_pattern(request.subject)
            if request.queue:
                validate_queue(request.queue)
            try:
                overflow = _NAMES[Overflow(request.overflow)]
            except ValueError:
                raise ConfigurationError(f"unknown overflow policy {request.overflow}") from None
            bus = await self._bus(context.peer())
        except (AsyncIPCError, _Refused) as exc:
            await _abort(context, exc)
        failure: BaseException | None = None
        try:
            sub = bus.subscribe(
                request.subject,
                request.queue or None,
                max_pending=request.max_pending or DEFAULT_MAX_PENDING,
                max_bytes=request.max_bytes or DEFAULT_MAX_BYTES,
                overflow=overflow,
            )
            await bus.flush()
            # The response headers say the subscription is in effect: a client that
            # waits for them before publishing misses nothing.
            await context.send_initial_metadata((("asyncipc-subscribed", request.subject),))
            async for msg in sub:
                await context.write(_message(msg))
        except AsyncIPCError as exc:
            failure = exc
        finally:
            await bus.close()
        if failure is not None:
            await _abort(context, failure)

    async def Connect(self, request_iterator: Any, context: Any) -> None:
        """Attach the stream to the broker as a client (a :class:`ServerLink`)."""
        try:
            token = _token(context)
        except _Refused as exc:
            await _abort(context, exc)
        link = ServerLink(context, self._options, PeerInfo("grpc", context.peer()), token)
        self._accept(link)
        await link.serve()


def _check(request: Any) -> None:
    if type(request) is Malformed:
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT, f"the request does not parse: {request.error}"
        )


def _parser(message_type: Any) -> Callable[[bytes], Any]:
    """A deserializer that returns :class:`Malformed` instead of raising."""
    parse = message_type.FromString

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Malformed(str(exc))

    return deserialize


def add_bus_service(server: grpc.aio.Server, service: BusService) -> None:
    """Register ``service`` on ``server``: the generated ``add_BusServicer_to_server``,
    but with deserializers that let bad bytes reach the handler as :class:`Malformed`."""
    handlers = {
        "Publish": grpc.unary_unary_rpc_method_handler(
            service.Publish,
            request_deserializer=_parser(pb.Message),
            response_serializer=pb.PublishResponse.SerializeToString,
        ),
        "Request": grpc.unary_unary_rpc_method_handler(
            service.Request,
            request_deserializer=_parser(pb.RequestRequest),
            response_serializer=pb.Message.SerializeToString,
        ),
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            service.Subscribe,
            request_deserializer=_parser(pb.SubscribeRequest),
            response_serializer=pb.Message.SerializeToString,
        ),
        "Connect": grpc.stream_stream_rpc_method_handler(
            service.Connect,
            request_deserializer=_parser(pb.ConnectRequest),
            response_serializer=pb.ConnectResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


def _message(msg: Message) -> Any:
    return pb.Message(
        subject=msg.subject, data=msg.data, headers=msg.headers, reply_to=msg.reply_to
    )


async def _abort(context: Any, exc: BaseException) -> Any:
    """End the call with the status for ``exc`` (raises, as ``context.abort`` does)."""
    code = exc.code if isinstance(exc, _Refused) else status_of(exc)
    await context.abort(code, str(exc))


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
