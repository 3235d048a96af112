"""The gRPC adapter: ``grpc://host:port``, a broker listener and a client transport.

``Broker.listen("grpc://127.0.0.1:50051")`` (or ``asyncipc broker --grpc HOST:PORT``)
serves the ``asyncipc.v1.Bus`` service of ``protos/asyncipc/v1/bus.proto`` on grpc.aio,
with the standard health-checking and reflection services beside it. What comes in is an
ordinary participant of the bus, both ways:

* each ``Connect`` stream is a :class:`~asyncipc.adapters._grpc_link.ServerLink` attached
  with ``Broker.attach``, a client like one on a Unix socket, which speaks the wire
  protocol's frames as protobuf messages;
* each ``Subscribe`` call is an in-process :class:`~asyncipc.Bus` of its own (so that one
  slow gRPC subscriber slows nobody else's stream), and ``Publish``/``Request`` calls
  share one in-process Bus per token: the broker authenticates them as it does any client.

``asyncipc.connect("grpc://host:port")`` is the client side: a Link over a ``Connect``
stream, under the same Bus every other transport has. ``docs/grpc.md`` has the status
codes, authentication and what flow control means over gRPC.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..client import DEFAULT_MAX_BYTES, DEFAULT_MAX_PENDING, Bus
from ..errors import (
    AsyncIPCError,
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    FrameTooLarge,
    HandshakeError,
    NoResponders,
    RequestTimeout,
    ServiceError,
    SlowConsumer,
)
from ..link import Accept, Link, Listener, PeerInfo
from ..message import Message
from ..options import ConnectOptions
from ..protocol import MSG_EXTRA, Overflow
from ..subjects import validate_pattern, validate_queue
from ..transports import URL, TransportOptions, register
from ..transports.memory import memory_pair
from ._grpc_link import SLACK, ClientLink, ServerLink
from ._proto import bus_pb2 as pb
from ._proto import bus_pb2_grpc

pb_grpc: Any = bus_pb2_grpc  # generated without annotations

__all__ = ["DEFAULT_REQUEST_TIMEOUT", "SERVICE", "GrpcListener", "GrpcTransport", "status_of"]

log = logging.getLogger("asyncipc.grpc")

SERVICE = "asyncipc.v1.Bus"
"""The full name of the service, as health checks and reflection know it."""

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds a ``Request`` call without a deadline waits for its reply."""

STOP_GRACE = 5.0
"""Seconds the server gives calls still running once the broker has closed its links
(``Publish`` or ``Request`` calls caught mid-way); then they are cancelled."""

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


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


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


class _Servicer:
    """The ``asyncipc.v1.Bus`` service of one listener (see the module docstring)."""

    def __init__(self, accept: Accept, options: TransportOptions, url: str) -> None:
        self._accept = accept
        self._options = options
        self._url = url
        self._lock = asyncio.Lock()
        self._needs_token: bool | None = None  # learnt from the first unary call
        self._buses: dict[str | None, Bus] = {}  # for Publish and Request, by token

    async def _bus(self, token: str | None, who: str) -> Bus:
        """A new in-process Bus, attached to the broker like any client."""
        client, server = memory_pair("grpc", self._options)
        server.transport = "grpc"
        server.peer = PeerInfo("grpc", who)
        self._accept(server)
        options = ConnectOptions(name=f"grpc {who}", token=token, max_frame=self._options.max_frame)
        bus = Bus(client, options, self._url)
        try:
            await bus._handshake()
        except BaseException:
            client.abort()
            raise
        return bus

    async def _unary_bus(self, context: Any) -> Bus:
        """The shared Bus for this call's token; the broker decides if the token is good.

        Only tokens the broker accepted get a Bus (the first call finds out whether the
        broker wants one at all), so that callers cannot grow the cache at will.
        """
        token = _token(context)
        key = token if self._needs_token else None
        bus = self._buses.get(key)
        if self._needs_token is not None and bus is not None and not bus.is_closed:
            return bus
        async with self._lock:
            if self._needs_token is None:
                try:
                    self._buses[None] = await self._bus(None, "unary calls")
                    self._needs_token = False
                except AuthenticationError:
                    self._needs_token = True
            key = token if self._needs_token else None
            if self._needs_token and token is None:
                raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "token required")
            bus = self._buses.get(key)
            if bus is None or bus.is_closed:
                bus = self._buses[key] = await self._bus(key, "unary calls")
            return bus

    async def close(self) -> None:
        buses, self._buses = list(self._buses.values()), {}
        for bus in buses:
            await bus.close()

    # --- the RPCs ----------------------------------------------------------------------

    async def Publish(self, request: Any, context: Any) -> Any:
        try:
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
        timeout = context.time_remaining()
        try:
            bus = await self._unary_bus(context)
            reply = await bus.request(
                request.subject,
                request.data,
                headers=dict(request.headers) or None,
                timeout=DEFAULT_REQUEST_TIMEOUT if timeout is None else max(timeout, 0.0),
            )
        except (AsyncIPCError, _Refused) as exc:
            await _abort(context, exc)
        return _message(reply)

    async def Subscribe(self, request: Any, context: Any) -> None:
        try:
            token = _token(context)
            validate_pattern(request.subject)
            if request.queue:
                validate_queue(request.queue)
            try:
                overflow = _NAMES[Overflow(request.overflow)]
            except ValueError:
                raise ConfigurationError(f"unknown overflow policy {request.overflow}") from None
            bus = await self._bus(token, context.peer())
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
        try:
            token = _token(context)
        except _Refused as exc:
            await _abort(context, exc)
        link = ServerLink(context, self._options, PeerInfo("grpc", context.peer()), token)
        self._accept(link)
        await link.serve()


def _message(msg: Message) -> Any:
    return pb.Message(
        subject=msg.subject, data=msg.data, headers=msg.headers, reply_to=msg.reply_to
    )


async def _abort(context: Any, exc: BaseException) -> Any:
    """End the call with the status for ``exc`` (raises, as ``context.abort`` does)."""
    code = exc.code if isinstance(exc, _Refused) else status_of(exc)
    await context.abort(code, str(exc))


class GrpcListener(Listener):
    """A grpc.aio server serving one broker. See the module docstring."""

    def __init__(self, url: str, server: grpc.aio.Server, health: Any, servicer: _Servicer) -> None:
        self.url = url
        self._server = server
        self._health = health
        self._servicer = servicer
        self._stopping: asyncio.Future[None] | None = None

    async def aclose(self) -> None:
        """Report NOT_SERVING and refuse new calls; the streams already open go on
        until the broker has drained and closed them."""
        if self._stopping is None:
            await self._health.enter_graceful_shutdown()
            self._stopping = asyncio.ensure_future(self._server.stop(STOP_GRACE))
            await asyncio.sleep(0)  # the server's shutdown has begun: new calls refused

    async def wait_closed(self) -> None:
        if self._stopping is None:
            await self.aclose()
        assert self._stopping is not None
        await self._servicer.close()
        await self._stopping


class GrpcTransport:
    """The ``grpc`` scheme: :meth:`listen` serves a broker, :meth:`connect` a Bus."""

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        if not url.host or url.port is None:
            raise ConfigurationError(f"{url.raw}: expected grpc://host:port")
        limit = options.max_frame + MSG_EXTRA + SLACK
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # Without this a second broker could bind the same port and share it.
                ("grpc.so_reuseport", 0),
            ]
        )
        servicer = _Servicer(accept, options, url.raw)
        pb_grpc.add_BusServicer_to_server(servicer, server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        address = f"{_host(url.host)}:{url.port}"
        error: Exception | None = None
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            port, error = 0, exc
        if not port:
            await server.stop(None)
            raise OSError(f"cannot listen on {url.raw}: {error or 'bind failed'}")
        await server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await health_servicer.set("", serving)
        await health_servicer.set(SERVICE, serving)
        real = f"grpc://{_host(url.host)}:{port}"
        return GrpcListener(real, server, health_servicer, servicer)

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        if not url.host or url.port is None:
            raise ConfigurationError(f"{url.raw}: expected grpc://host:port")
        target = f"{_host(url.host)}:{url.port}"
        limit = options.max_frame + MSG_EXTRA + SLACK
        channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        try:
            async with asyncio.timeout(options.connect_timeout):
                await _ready(channel, url.raw)
        except BaseException as exc:
            await channel.close()
            if isinstance(exc, TimeoutError):
                raise ConnectError(
                    f"no gRPC server answered at {url.raw} within {options.connect_timeout:g} s"
                ) from None
            raise
        call = pb_grpc.BusStub(channel).Connect()
        return ClientLink(call, channel, options, PeerInfo("grpc", target))


async def _ready(channel: grpc.aio.Channel, url: str) -> None:
    """Wait until the channel is connected; fail at once on a refused connection
    instead of retrying with back-off until the time-out."""
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise ConnectError(f"cannot connect to {url}: no gRPC server there")
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)


register("grpc", GrpcTransport())
