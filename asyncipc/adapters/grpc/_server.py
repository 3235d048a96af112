"""The broker's side of the gRPC adapter: the ``asyncipc.v1.Bus`` service.

Every RPC becomes an ordinary client of the broker. A ``Connect`` stream is a
:class:`~asyncipc.adapters.grpc._server_link.ServerLink` handed to ``Broker.attach``;
``Subscribe``, ``Publish`` and ``Request`` go through in-process :class:`~asyncipc.Bus`
objects on memory links, so that the broker treats them (subject checks, flow control,
no-responders) exactly as any other client; the service checks their token against the
broker's first. What goes wrong maps to gRPC status codes by :func:`status_of` (for a
``Connect`` stream: ``_server_link.grpc_status``), as ``docs/grpc.md`` documents.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ..._access import find_user, publish_refusal, subscribe_refusal
from ..._stats import BrokerStats
from ...client import DEFAULT_MAX_BYTES, DEFAULT_MAX_PENDING, Bus
from ...errors import (
    AsyncIPCError,
    AuthenticationError,
    BrokerError,
    ConfigurationError,
    ConnectionClosed,
    FrameTooLarge,
    HandshakeError,
    NoResponders,
    PermissionDenied,
    RequestTimeout,
    ServiceError,
    SlowConsumer,
    StreamError,
)
from ...link import Accept, PeerInfo
from ...message import Message
from ...options import BrokerOptions, ConnectOptions
from ...protocol import ErrorCode, Overflow
from ...protocol.system import (
    ERROR_HEADER,
    REFUSED_STATUS,
    RESERVED_PREFIX,
    STATUS_HEADER,
    STREAM_PREFIX,
)
from ...subjects import validate_pattern, validate_queue
from ...subscription import Subscription
from ...transports import TransportOptions
from ...transports.memory import memory_pair
from ...users import User
from ._link import Malformed
from ._server_link import ServerLink
from .proto import bus_pb2 as pb

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "SERVICE",
    "BusService",
    "add_bus_service",
    "permission_denied",
    "status_of",
]

log = logging.getLogger("asyncipc.grpc")

SERVICE = "asyncipc.v1.Bus"
"""The full name of the service, as health checks and reflection know it."""

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds a ``Request`` call without a deadline waits for its reply."""

_NAMES = {
    policy: name
    for name, policy in {
        "block": Overflow.BLOCK,
        "drop_oldest": Overflow.DROP_OLDEST,
        "drop_new": Overflow.DROP_NEW,
        "error": Overflow.ERROR,
    }.items()
}

# A stream refusal's StreamError.reason; the other reasons are about the request
# (bad-config, bad-request, wrong-subject): INVALID_ARGUMENT.
_STREAM_REASONS = {
    "stream-not-found": grpc.StatusCode.NOT_FOUND,
    "consumer-not-found": grpc.StatusCode.NOT_FOUND,
    "not-found": grpc.StatusCode.NOT_FOUND,
    "exists": grpc.StatusCode.ALREADY_EXISTS,
    "overlap": grpc.StatusCode.FAILED_PRECONDITION,
    "not-pending": grpc.StatusCode.FAILED_PRECONDITION,
    "limit": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too-large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "closed": grpc.StatusCode.UNAVAILABLE,
    "store": grpc.StatusCode.INTERNAL,
    "internal": grpc.StatusCode.INTERNAL,
}

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (FrameTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
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
    if isinstance(exc, StreamError):
        return _STREAM_REASONS.get(exc.reason, grpc.StatusCode.INVALID_ARGUMENT)
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
    token, _ = _credentials(context)
    return token


def _credentials(context: Any) -> tuple[str | None, tuple[str, str] | None]:
    """The call's ``authorization`` metadata: ``Bearer <token>``, or ``Basic <base64
    user:password>`` for a broker with users (docs/security.md)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, rest = str(value).partition(" ")
            rest = rest.strip()
            if scheme.lower() == "basic" and rest:
                try:
                    text = base64.b64decode(rest, validate=True).decode()
                except (binascii.Error, UnicodeDecodeError):
                    text = ""
                name, sep, password = text.partition(":")
                if not sep:
                    raise _Refused(
                        grpc.StatusCode.UNAUTHENTICATED,
                        "Basic credentials must be base64 of 'user:password'",
                    )
                return None, (name, password)
            if scheme.lower() != "bearer" or not rest:
                raise _Refused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "authorization metadata must be 'Bearer <token>' or 'Basic <user:password>'",
                )
            return rest, None
    return None, None


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
        self,
        accept: Accept,
        options: TransportOptions,
        url: str,
        token: str | None,
        users: Callable[[], tuple[User, ...]] = tuple,
        limits: BrokerOptions | None = None,
        stats: BrokerStats | None = None,
    ) -> None:
        self._accept = accept
        self._options = options
        self._url = url
        self._token = token
        self._users = users  # the broker's users now: a reload changes them
        self._limits = limits or BrokerOptions(token=token)
        """The broker's options: what caps the bounds a ``Subscribe`` asks for."""
        self._stats = stats
        """The broker's counters: a ``Subscribe`` call's drops are added when it ends."""
        self._lock = asyncio.Lock()
        self._unary: Bus | None = None  # the one Publish and Request share
        self._user_buses: dict[str, Bus] = {}  # unary buses of restricted users

    async def _authorize(self, context: Any) -> User | None:
        """Who the caller is (``None``: the token, or no credentials needed); refuse the
        call (UNAUTHENTICATED) unless it carries the broker's token when it has one, or
        on a broker with users, a user's name and password."""
        expected, users = self._token, self._users()
        if expected is None and not users:
            return None
        token, basic = _credentials(context)
        if basic is not None and users:
            user = await find_user(users, *basic)
            if user is None:
                raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "unknown user or wrong password")
            return user
        if token is None:
            accepted = "'Bearer <token>'" + (" or 'Basic <user:password>'" if users else "")
            what = "credentials" if users else "token"
            raise _Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{what} required: send the metadata 'authorization: {accepted[1:-1]}'",
            )
        if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        return None

    async def _bus(self, who: str, user: User | None = None) -> Bus:
        """A new in-process Bus, attached to the broker like any client. Its link says
        ``grpc`` with the caller's address: the broker counts it as gRPC and never takes
        it for one of its own in-process clients (which may ask to signal local ones)."""
        client, server = memory_pair("grpc", self._options)
        server.transport = "grpc"
        # A user the call authenticated rides along: the broker enforces its permissions.
        server.peer = PeerInfo("grpc", who, extra={"user": user} if user is not None else {})
        self._accept(server)
        options = ConnectOptions(
            name=f"grpc {who}", token=self._token, max_frame=self._options.max_frame
        )
        return await _InternalBus.open(client, options, self._url)

    async def _unary_bus(self, context: Any, user: User | None = None) -> Bus:
        """The bus unary calls go through: shared, or the caller's user's own."""
        if user is None:
            user = await self._authorize(context)
        if user is not None and not user.permissions.unrestricted:
            bus = self._user_buses.get(user.name)
            if bus is None or bus.is_closed:
                bus = self._user_buses[user.name] = await self._bus(f"user {user.name}", user)
            return bus
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
        for bus in self._user_buses.values():
            await bus.close()

    # --- the RPCs ----------------------------------------------------------------------

    async def Publish(self, request: Any, context: Any) -> Any:
        """Publish one message through the shared in-process bus."""
        try:
            _check(request)
            _generic(request.subject)
            _not_reserved(request.subject, request.reply_to or None)
            user = await self._authorize(context)
            _permitted(publish_refusal(user, request.subject, request.reply_to or None))
            bus = await self._unary_bus(context, user)
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
            _generic(request.subject)
            user = await self._authorize(context)
            _permitted(publish_refusal(user, request.subject))
            bus = await self._unary_bus(context, user)
            reply = await bus.request(
                request.subject,
                request.data,
                headers=dict(request.headers) or None,
                timeout=DEFAULT_REQUEST_TIMEOUT if timeout is None else max(timeout, 0.0),
            )
        except (AsyncIPCError, _Refused) as exc:
            await _abort(context, exc)
        if reply.headers and reply.headers.get(STATUS_HEADER) == REFUSED_STATUS:
            # The broker refused a request to a reserved subject (protocol.md §12).
            await _abort(context, permission_denied(reply.headers.get(ERROR_HEADER, "refused")))
        return _message(reply)

    async def Subscribe(self, request: Any, context: Any) -> None:
        """Stream a subscription of an in-process bus of this call's own."""
        try:
            _check(request)
            user = await self._authorize(context)
            validate_pattern(request.subject)
            _permitted(subscribe_refusal(user, request.subject))
            if request.queue:
                validate_queue(request.queue)
            _not_reserved(request.subject, None)
            try:
                overflow = _NAMES[Overflow(request.overflow)]
            except ValueError:
                raise ConfigurationError(f"unknown overflow policy {request.overflow}") from None
            bus = await self._bus(context.peer(), user)
        except (AsyncIPCError, _Refused) as exc:
            await _abort(context, exc)
        failure: BaseException | None = None
        # What the caller asks for, capped by the broker: a caller that never reads
        # must not make the broker hold whatever it chose (0: the default, capped too).
        max_pending, max_bytes = self._limits.subscription_bounds(
            request.max_pending or DEFAULT_MAX_PENDING, request.max_bytes or DEFAULT_MAX_BYTES
        )
        sub: Subscription | None = None
        try:
            sub = bus.subscribe(
                request.subject,
                request.queue or None,
                max_pending=max_pending,
                max_bytes=max_bytes,
                overflow=overflow,
            )
            await bus.flush()
            if not sub.active and not sub.pending:
                # Refused by the broker (ERR 102 naming it): PERMISSION_DENIED, not OK.
                await sub.next_msg(timeout=0)  # raises what ended it
            # The response headers say the subscription is in effect: a client that
            # waits for them before publishing misses nothing; and the bounds in effect.
            await context.send_initial_metadata(
                (
                    ("asyncipc-subscribed", request.subject),
                    ("asyncipc-max-pending", str(max_pending)),
                    ("asyncipc-max-bytes", str(max_bytes)),
                )
            )
            async for msg in sub:
                await context.write(_message(msg))
        except BrokerError as exc:
            failure = permission_denied(exc.message) if exc.code == ErrorCode.PERMISSION else exc
        except AsyncIPCError as exc:
            failure = exc
        finally:
            await bus.close()
            if sub is not None and sub.dropped and self._stats is not None:
                # What its drop policy cost it, in the broker's counters (and /metrics).
                self._stats.dropped += sub.dropped
                self._stats.add("grpc", dropped=sub.dropped)
        if failure is not None:
            await _abort(context, failure)

    async def Connect(self, request_iterator: Any, context: Any) -> None:
        """Attach the stream to the broker as a client (a :class:`ServerLink`)."""
        try:
            token, basic = _credentials(context)
        except _Refused as exc:
            await _abort(context, exc)
        link = ServerLink(context, self._options, PeerInfo("grpc", context.peer()), token, basic)
        self._accept(link)
        await link.serve()


def _permitted(why: str | None) -> None:
    """Refused by the caller's user's permissions: PERMISSION_DENIED, naming the subject."""
    if why is not None:
        raise _Refused(grpc.StatusCode.PERMISSION_DENIED, why)


def permission_denied(details: str) -> _Refused:
    """The one way the ``Bus`` service refuses what a caller may not do:
    ``PERMISSION_DENIED`` with the broker's (or the adapter's) reason, for ``Publish``,
    ``Request`` and ``Subscribe`` alike — never an ``OK`` that hides the refusal. Raise
    it in a call's ``try`` (or pass it to ``_abort``). A permission check refuses through
    here too."""
    return _Refused(grpc.StatusCode.PERMISSION_DENIED, details)


def _not_reserved(subject: str, reply_to: str | None) -> None:
    """Refuse a ``Publish`` or ``Subscribe`` on a ``$sys.`` subject, or a ``$sys.`` reply
    subject: they are the broker's. Through the shared bus the broker's ERR could only be
    logged, and the caller would have heard OK; a subscription there would never see a
    message (the broker delivers ``$sys.`` ones only to the connection that published
    them). ``$sys.kill.`` is a ``Request``, whose refusal the broker answers itself."""
    if subject.startswith(RESERVED_PREFIX):
        raise permission_denied(f"subject {subject!r} is reserved for the broker")
    if reply_to is not None and reply_to.startswith(RESERVED_PREFIX):
        raise permission_denied(f"reply subject {reply_to!r} is reserved for the broker")


def _check(request: Any) -> None:
    if type(request) is Malformed:
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT, f"the request does not parse: {request.error}"
        )


def _generic(subject: str) -> None:
    """Refuse the streams API's subjects on ``Publish`` and ``Request``: the ``Streams``
    service is the way to it. Through the bus those calls share, ``$sys.stream.``
    requests would create consumers that bus owns (never removed: it never
    disconnects) and pull batches past ``Fetch``'s bounds."""
    if subject.startswith(STREAM_PREFIX):
        raise permission_denied(
            f"{subject!r} is the broker's streams API: use the asyncipc.v1.Streams service"
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
