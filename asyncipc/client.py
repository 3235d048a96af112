"""The :class:`Bus` a user holds: publish, subscribe, request, serve, over one link."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar, overload

import anyio

from ._dialer import Dialer, backoff
from ._events import ConnectionEvent, EventHub, EventStream
from ._logsafe import printable
from ._native import mypyc_attr
from ._responder import Callback, EndpointStats, Handler, reply_error, responder
from ._shield import shielded
from ._tracing import tracing_for
from ._workers import run_pool
from .errors import (
    AuthenticationError,
    BrokenLinkError,
    BrokerError,
    ClosedError,
    ConfigurationError,
    ConnectError,
    ConnectionClosed,
    Disconnected,
    FrameTooLarge,
    HandshakeError,
    InvalidBody,
    InvalidSubject,
    PermissionDenied,
    RequestTimeout,
    SlowConsumer,
)
from .link import Link
from .message import Message
from .options import ConnectOptions
from .protocol import (
    PING,
    PONG,
    PROTOCOL_VERSION,
    Err,
    ErrorCode,
    Frame,
    Headers,
    Hello,
    Msg,
    Ping,
    Pong,
    Sub,
    Unsub,
    Welcome,
    format_timeout,
)
from .protocol.system import (
    TIMEOUT_HEADER,
    sendable_names,
)
from .streams.client import Stream, list_streams, open_stream
from .streams.config import StreamInfo
from .subjects import known_valid, validate_pattern, validate_queue, validate_subject
from .subscription import OVERFLOW_POLICIES, Subscription, TypedSubscription

__all__ = ["Bus", "Handler"]

log = logging.getLogger("asyncipc.client")


DEFAULT_MAX_PENDING = 65536
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_HANDLER_CONCURRENCY = 64
"""Requests one handler (:meth:`Bus.handler`, :meth:`Bus.serve`, a Service endpoint) runs
at once unless told otherwise (docs/services.md, "Concurrency")."""

T = TypeVar("T")
H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


def _expire(fut: asyncio.Future[Message], subject: str, timeout: float) -> None:
    """A request's time-out: its future fails with :class:`~asyncipc.RequestTimeout`."""
    if not fut.done():
        fut.set_exception(
            RequestTimeout(f"no reply to request on {subject!r} within {timeout:g} s")
        )


@mypyc_attr(allow_interpreted_subclasses=True)
class Bus:
    """A connection to a broker. Get one with :func:`asyncipc.connect`."""

    def __init__(
        self, link: Link, options: ConnectOptions, url: str, dialer: Dialer | None = None
    ) -> None:
        self.url = url
        self.options = options
        self._link = link
        # The link again if it is a socket's (a StreamLink: unix, tcp, tls, pipes), kept
        # with _link: compiled, publish() then calls it natively, where the Link interface
        # (not a native class) costs a lookup by name per call. Imported here, not with
        # this module: ``import asyncipc`` loads no transport (tests/test_imports.py).
        from .transports._stream.link import StreamLink

        self._stream: StreamLink | None = link if isinstance(link, StreamLink) else None
        self._link_url = link.reached or url
        # Reconnecting: who to dial, the task that does, and what publish() held meanwhile.
        self._dialer = dialer if dialer is not None and options.reconnect else None
        self._up = False  # a welcomed link carries our frames: publish()'s one check
        self._interrupted = False  # a self-healing link (nats://) is reconnecting by itself
        self._ever_up = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._held: deque[tuple[str, bytes, str | None, Headers | None]] = deque()
        self._held_bytes = 0
        self._room = asyncio.Event()  # set whenever publishers waiting for room may retry
        self._connected = asyncio.Event()  # set while _up, and for good once closed
        self._cause: BaseException | None = None  # why we are dropping the link ourselves
        self._refused: HandshakeError | None = None  # a broker's ERR to our HELLO
        self._events = EventHub()
        self._loop = asyncio.get_running_loop()
        self._subs: dict[int, Subscription] = {}
        self._next_sid = 0
        self._blocked: set[Subscription] = set()
        self._pongs: deque[asyncio.Future[None]] = deque()
        self._welcome: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._inbox_prefix = f"_INBOX.{os.urandom(11).hex()}."
        self._inbox_sid = 0
        self._requests: dict[str, tuple[asyncio.Future[Message], str, float, float]] = {}
        """Requests waiting for a reply, by inbox token: (future, subject, deadline, timeout)."""
        self._next_request = 0
        self._unchecked: str | None = None
        """A subject :meth:`publish` need not validate, by identity: the reply inbox this
        bus just made for a request, or the reply subject of a request it received (which
        its broker validated), set just before the publish that sends it."""
        self._expiry: asyncio.TimerHandle | None = None  # the time-outs' one timer
        self._expiry_at = math.inf  # when it fires
        self.refused = 0
        """Publishes, requests and subscriptions the broker refused for want of permission
        (each also reported: an exception or an ``"error"`` event; ``docs/security.md``)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._lost: BaseException | None = None
        self._closed = asyncio.Event()
        self._gone = asyncio.Event()  # set by link_lost: closed by us or broken
        self._timer: asyncio.TimerHandle | None = None
        self._on_close: list[Callable[[], Awaitable[None]]] = []
        self.max_payload = link.max_frame - 64
        self.server_info: dict[str, Any] = {}
        self._tracing = tracing_for(options.tracing)  # None unless OpenTelemetry is on

    # --- connection -----------------------------------------------------------------

    @classmethod
    async def open(
        cls, link: Link, options: ConnectOptions, url: str, dialer: Dialer | None = None
    ) -> Self:
        """A Bus over ``link``, a link that has just connected: say HELLO, wait for WELCOME.

        For transports and adapters that make their own links (:func:`asyncipc.connect`
        is the way for applications). If the handshake fails or is cancelled, ``link`` is
        aborted and the error raised: :class:`~asyncipc.HandshakeError` when no WELCOME
        comes within ``options.connect_timeout``, the broker's refusal otherwise. With a
        ``dialer`` (package-internal: ``connect()`` makes one), a dropped link is replaced.
        """
        bus = cls(link, options, url, dialer)
        try:
            await bus._handshake()
        except BaseException:
            link.abort()
            raise
        bus._went_up()
        return bus

    def _went_up(self) -> None:
        self._up = self._ever_up = True
        self._connected.set()
        self._room.set()

    async def _handshake(self) -> None:
        self._link.set_receiver(self)
        opts = self.options
        hello: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "lang": "python",
            "name": opts.name,
            "max_frame": opts.max_frame,
        }
        if opts.token is not None:
            hello["token"] = opts.token
        if opts.user is not None:
            hello["user"] = opts.user
            if opts.password is not None:
                hello["password"] = opts.password
        if opts.allow_signals:
            hello["signals"] = sendable_names(opts.allow_signals)  # docs/signals.md
        with contextlib.suppress(ConnectionClosed):
            # A link that died already has told link_lost why: _welcome raises it below.
            self._link.send(Hello(hello))
        try:
            async with asyncio.timeout(opts.connect_timeout):
                info = await self._welcome
        except TimeoutError:
            self._link.abort()
            raise HandshakeError(
                f"no WELCOME from {self.url} within {opts.connect_timeout:g} s"
            ) from None
        self.server_info = info
        if opts.allow_signals and "signals" not in info:
            log.warning("%s: the broker does not support allow_signals", self.url)
        peer_max = info.get("max_frame")
        if isinstance(peer_max, int) and peer_max >= 1024:
            self._link.max_frame = min(self._link.max_frame, peer_max)
        # Headroom for the subject and headers that travel with the payload.
        self.max_payload = self._link.max_frame - 64
        if opts.ping_interval > 0 and not self._link.in_process:
            self._timer = self._loop.call_later(opts.ping_interval, self._keepalive)

    def _keepalive(self) -> None:
        self._timer = None
        if not self._up or self._link.closed:
            return
        opts = self.options
        idle = self._loop.time() - self._link.last_received
        if self._blocked:
            idle = 0.0  # we stopped reading ourselves
        if idle >= opts.ping_interval * opts.dead_peer_factor:
            log.warning("%s: broker silent for %.1f s, dropping the connection", self.url, idle)
            self._cause = BrokenLinkError(
                f"broker at {self._link_url} stopped responding ({idle:.1f} s)"
            )
            self._link.abort()
            return
        if idle >= opts.ping_interval:
            with contextlib.suppress(ConnectionClosed):
                self._link.send(PING)
        self._timer = self._loop.call_later(opts.ping_interval, self._keepalive)

    @property
    def is_closed(self) -> bool:
        """True once :meth:`close` started, or the link broke for good (reconnecting off,
        or given up). A bus that is reconnecting is not closed."""
        return self._closing or self._lost is not None

    @property
    def is_connected(self) -> bool:
        """True while a link to the broker is up (false while reconnecting, and after
        :meth:`close`)."""
        return self._up and not self._closing and not self._interrupted

    @property
    def connected_url(self) -> str | None:
        """The URL of the broker the bus is connected to now, or ``None``."""
        return self._link_url if self.is_connected else None

    def events(self) -> EventStream:
        """The connection's events from now on, as :class:`~asyncipc.ConnectionEvent`:
        ``async for event in bus.events(): ...``. Any number of readers may iterate; one
        that stops reading loses the oldest events, never holds the bus back. Iteration
        ends after the ``"closed"`` event."""
        return self._events.stream()

    async def wait_closed(self) -> None:
        """Wait until the connection is gone for good: :meth:`close` ran, or the broker
        went away and reconnecting is off or gave up (a service that should exit with
        its broker awaits this, with ``reconnect=False``)."""
        await self._gone.wait()

    @property
    def peer(self) -> Any:
        """What is known of the broker end of the link (:class:`~asyncipc.link.PeerInfo`)."""
        return self._link.peer

    # --- LinkReceiver -----------------------------------------------------------------

    def msg_received(
        self, sid: int, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        sub = self._subs.get(sid)
        if sub is not None:
            sub._deliver(subject, data, headers, reply)
        elif sid == self._inbox_sid:
            self._reply_received(subject, data, headers)

    def pub_received(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        log.warning("%s: ignoring a PUB sent by the broker", self.url)

    def frame_received(self, frame: Frame) -> None:
        if type(frame) is Msg:
            self.msg_received(frame.sid, frame.subject, frame.data, frame.reply, frame.headers)
        elif type(frame) is Pong:
            if self._pongs:
                fut = self._pongs.popleft()
                if not fut.done():
                    fut.set_result(None)
        elif type(frame) is Ping:
            with contextlib.suppress(ConnectionClosed):
                self._link.send(PONG)
        elif type(frame) is Err:
            self._error_received(frame)
        elif type(frame) is Welcome and not self._welcome.done():
            self._welcome.set_result(frame.fields)

    def link_lost(self, exc: BaseException | None) -> None:
        cause = self._cause or exc or ClosedError("bus is closed")
        self._cause = None
        if not self._closing and self._lost is None and self._dialer is not None:
            if self._reconnecting is not None:
                # An attempt's link died during its handshake: that attempt fails.
                if not self._welcome.done():
                    self._welcome.set_exception(HandshakeError(f"connection lost: {cause}"))
                    self._welcome.exception()
                return
            if self._up:
                self._begin_reconnect(cause)
                return
        self._end(cause)

    # --- a link that reconnects by itself (nats://: nats-py does; link.SelfHealingReceiver)

    def link_interrupted(self, cause: BaseException, address: str) -> None:
        """The link's own client lost its server and reconnects: the bus stays up (what is
        published waits in that client's buffer, subscriptions are its to restore), and a
        request in flight fails now with Disconnected, as when the bus itself redials."""
        if self._closing or self._lost is not None or self._interrupted:
            return
        self._interrupted = True
        self._link_url = address
        log.warning("%s: connection lost (%s); reconnecting", self._link_url, cause)
        for fut, asked, _, _ in self._requests.values():
            if not fut.done():
                fut.set_exception(
                    Disconnected(f"connection lost before the reply to {asked!r}: {cause}")
                )
        self._events.emit(ConnectionEvent("disconnected", self._link_url, cause))

    def link_resumed(self, address: str) -> None:
        """The link's own client is connected again, at ``address``."""
        if self._closing or self._lost is not None:
            return
        self._interrupted = False
        self._link_url = address
        log.info("%s: reconnected", address)
        self._events.emit(ConnectionEvent("reconnected", address))

    def link_error(self, exc: BaseException) -> None:
        """The link's server refused something without ending the link."""
        if self._closing or self._lost is not None:
            return
        self._events.emit(ConnectionEvent("error", self._link_url, exc))

    def _end(self, cause: BaseException) -> None:
        """The bus is done with links for good: closed by us, or the broker is gone and
        we may not (or gave up trying to) reconnect."""
        was_up = self._up
        self._up = False
        self._gone.set()
        self._connected.set()  # whoever waits for a link must look again, and raise
        self._room.set()
        if self._lost is None:
            self._lost = cause
        lost = self._lost
        welcomed = self._ever_up
        # Not logged here: a refused handshake (raised to the caller of connect()), and an
        # orderly shutdown (ERR 7, logged at INFO when it arrived).
        shutdown = isinstance(lost, BrokerError) and lost.code == ErrorCode.SHUTDOWN
        if not self._closing and welcomed and was_up and not shutdown:
            log.warning("%s: connection lost: %s", self._link_url, lost)
        if not self._welcome.done():
            failure: Exception
            if isinstance(lost, HandshakeError):
                failure = lost
            elif isinstance(lost, ConnectError):
                # The link found no broker at the URL (an HTTP server answered instead).
                failure = ConnectError(f"cannot connect to {self.url}: {lost}")
            else:
                failure = HandshakeError(
                    f"connection to {self.url} closed during handshake: {lost}"
                )
            self._welcome.set_exception(failure)
            self._welcome.exception()  # mark retrieved: the handshake may already be gone
        error = lost if not isinstance(lost, ClosedError) else None
        # Reconnecting gave up: what waited for it hears Disconnected (a BrokenLinkError).
        broken = Disconnected if isinstance(lost, Disconnected) else BrokenLinkError
        for sub in list(self._subs.values()):
            sub._end(broken(str(error)) if error is not None else None)
        self._subs.clear()
        for fut, _, _, _ in self._requests.values():
            if not fut.done():
                fut.set_exception(broken(f"connection lost before the reply: {lost}"))
        for pong in self._pongs:
            if not pong.done():
                pong.set_exception(broken(f"connection lost: {lost}"))
        self._pongs.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry, self._expiry_at = None, math.inf
        if self._held:
            log.warning(
                "%s: %d publishes held for the reconnect are lost", self.url, len(self._held)
            )
            self._held.clear()
            self._held_bytes = 0
        if welcomed:
            gave_up = None if isinstance(lost, ClosedError) else lost
            self._events.emit(ConnectionEvent("closed", self._link_url, gave_up))

    # --- reconnecting -----------------------------------------------------------------

    def _begin_reconnect(self, cause: BaseException) -> None:
        """The link dropped under a live bus: fail what waited on it, keep the rest, dial."""
        self._up = False
        self._connected.clear()
        self._room.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        shutdown = isinstance(cause, BrokerError) and cause.code == ErrorCode.SHUTDOWN
        (log.info if shutdown else log.warning)(
            "%s: connection lost (%s); reconnecting", self._link_url, cause
        )
        # A request in flight may have been lost with the broker: say so now, not at its
        # time-out. Its caller decides whether asking again is safe.
        for fut, asked, _, _ in self._requests.values():
            if not fut.done():
                fut.set_exception(
                    Disconnected(f"connection lost before the reply to {asked!r}: {cause}")
                )
        self._events.emit(ConnectionEvent("disconnected", self._link_url, cause))
        assert self._dialer is not None
        self._dialer.again_from(self._link_url)
        self._reconnecting = self._loop.create_task(
            self._reconnect(cause), name=f"asyncipc reconnect {self.url}"
        )

    async def _reconnect(self, cause: BaseException) -> None:
        """Dial until a broker welcomes us, restore, release what publish() held. Owned by
        the bus: :meth:`close` cancels and awaits it."""
        dialer = self._dialer
        assert dialer is not None
        opts = self.options
        started = self._loop.time()
        attempts = 0
        last: BaseException = cause
        me = asyncio.current_task()
        try:
            for delay in backoff(opts.reconnect_delay, opts.reconnect_max_delay):
                if me is not None and me.cancelling():
                    # close() cancelled us and a transport's connect swallowed it (an
                    # exception racing the cancel): never go on dialling for a closed bus.
                    raise asyncio.CancelledError
                if opts.max_reconnect_attempts is not None and (
                    attempts >= opts.max_reconnect_attempts
                ):
                    break
                limit = opts.reconnect_time_limit
                if limit is not None and self._loop.time() - started + delay > limit:
                    break
                await asyncio.sleep(delay)
                attempts += 1
                try:
                    link, url = await dialer.dial()
                except (ConnectionClosed, ConnectError, ConfigurationError, OSError) as exc:
                    last = exc
                    continue
                from .transports._stream.link import StreamLink  # loaded: see __init__

                self._link, self._link_url = link, url
                self._stream = link if isinstance(link, StreamLink) else None
                self._fresh_handshake()
                try:
                    await self._handshake()
                except (HandshakeError, ConnectError, ConnectionClosed) as exc:
                    link.abort()
                    last = exc
                    if exc is self._refused:
                        # A broker is there and said no (a token, a limit): worth an
                        # alert. A reset or a silence is a broker dying or not up yet.
                        self._events.emit(ConnectionEvent("error", url, exc))
                    continue
                self._restore()
                log.info("%s: reconnected (attempt %d)", url, attempts)
                self._events.emit(ConnectionEvent("reconnected", url))
                return
        finally:
            self._reconnecting = None
        gave_up = Disconnected(
            f"gave up reconnecting to {self.url} after {attempts} attempts "
            f"in {self._loop.time() - started:.1f} s: {last}"
        )
        log.warning("%s", gave_up)
        self._end(gave_up)

    def _fresh_handshake(self) -> None:
        """A new link's WELCOME to wait for, and no refusal yet. A method, not two
        assignments in ``_reconnect``: there mypy would take ``_refused`` for ``None`` after
        the handshake too, and the compiled build would check that it is (a TypeError)."""
        self._welcome = self._loop.create_future()
        self._refused = None

    def _restore(self) -> None:
        """On a new link: every subscription as it was, then what publish() held, then a
        PING for each flush() still waiting (the old broker will never answer them)."""
        link = self._link
        if self._inbox_sid:
            link.send(Sub(self._inbox_sid, self._inbox_prefix + "*"))
        for sub in self._subs.values():
            link.send(
                Sub(sub.sid, sub.subject, sub.queue, sub.overflow, sub.max_pending, sub.max_bytes)
            )
        if self._blocked:
            link.pause_reading()
        held, self._held = self._held, deque()
        self._held_bytes = 0
        for subject, data, reply, headers in held:
            link.publish(subject, data, reply, headers)
        for _ in self._pongs:
            link.send(PING)
        self._went_up()

    def writing_resumed(self) -> None:
        pass  # publishers wait in Link.drain()

    def _error_received(self, frame: Err) -> None:
        code, message = frame.code, frame.message
        if not self._welcome.done():
            exc: HandshakeError = (
                AuthenticationError(message) if code == ErrorCode.AUTH else HandshakeError(message)
            )
            self._cause = self._refused = exc
            self._welcome.set_exception(exc)
            return
        sub = self._subs.get(frame.sid) if frame.sid else None
        if sub is not None and code in (ErrorCode.NOT_DELIVERED, ErrorCode.FRAME_TOO_LARGE):
            # One message was too big for us; the subscription itself is fine.
            sub.dropped += 1
            log.warning("%s: subscription %r lost a message: %s", self.url, sub.subject, message)
            return
        if sub is not None:
            error: Exception
            if code == ErrorCode.SLOW_CONSUMER:
                error = SlowConsumer(message)
            elif code == ErrorCode.INVALID_SUBJECT:
                error = InvalidSubject(message)
            elif code == ErrorCode.PERMISSION:
                self.refused += 1
                error = PermissionDenied(message)
            else:
                error = BrokerError(code, message)
            del self._subs[frame.sid]
            sub._end(error)
            return
        if code == ErrorCode.PERMISSION:
            self._permission_denied(frame.sid, message)
            return
        if code == ErrorCode.SHUTDOWN:
            log.info("%s: %s", self.url, message)
        else:
            log.warning("%s: broker error %s: %s", self.url, code, printable(message))
        if code < 100:
            self._cause = BrokerError(code, message)  # the broker hangs up next

    def _permission_denied(self, sid: int, message: str) -> None:
        """A refusal that names no subscription of ours: a publish (sid 0), or the inbox
        our requests are answered on. Never silent: an ``"error"`` event, counted."""
        self.refused += 1
        exc = PermissionDenied(message)
        log.warning("%s: %s", self.url, message)
        if sid and sid == self._inbox_sid:
            self._inbox_sid = 0  # the next request asks again
            for fut, _, _, _ in self._requests.values():
                if not fut.done():
                    fut.set_exception(PermissionDenied(message))
        self._events.emit(ConnectionEvent("error", self._link_url, exc))

    # --- publishing -------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        data: Any = b"",
        headers: dict[str, str] | None = None,
        reply_to: str | None = None,
    ) -> None:
        """Send ``data`` to every subscriber of ``subject``.

        ``data`` is ``bytes``, or a model sent as JSON with its ``content-type`` header
        (docs/services.md), as for :meth:`request`.

        Returns as soon as the message is handed to the link; waits only while the broker
        is not keeping up (backpressure). Raises :class:`~asyncipc.InvalidSubject` for a
        bad subject and :class:`~asyncipc.FrameTooLarge` for a payload over the maximum,
        before anything is sent.
        """
        # The common case costs one dict lookup; a request's fresh inbox, or the reply to
        # one (``_unchecked``), one comparison.
        if subject not in known_valid and subject is not self._unchecked:
            validate_subject(subject)
        if reply_to is not None and reply_to is not self._unchecked and reply_to not in known_valid:
            validate_subject(reply_to)
        if type(data) is not bytes:
            data, headers = _as_body(data, headers)
        if len(data) > self.max_payload:
            raise FrameTooLarge(
                f"payload of {len(data)} bytes exceeds the maximum of {self.max_payload} bytes"
            )
        if self._tracing is not None:
            headers = self._tracing.send(subject, headers, len(data))
        if not self._up:
            await self._hold(subject, data, reply_to, headers)
            return
        link = self._link
        stream = self._stream
        try:
            if stream is not None:
                stream.publish(subject, data, reply_to, headers)
            elif (direct := link.direct) is not None:
                # In-process: the broker's session, called without a hop.
                direct.pub_received(subject, data, reply_to, headers)
            else:
                link.publish(subject, data, reply_to, headers)
        except ConnectionClosed:
            if self._dialer is None or self._closing:
                raise
            # The link is gone and link_lost() is on its way: the reconnect sends it.
            await self._hold(subject, data, reply_to, headers)
            return
        if stream.write_blocked if stream is not None else link.write_blocked:
            await link.drain()

    async def _hold(
        self, subject: str, data: bytes, reply_to: str | None, headers: Headers | None
    ) -> None:
        """publish() without a link: keep the message for the reconnect, within
        ``reconnect_buffer`` bytes; past it, wait for room (the ``block`` principle)."""
        size = len(data) + len(subject) + 64
        while True:
            if self._lost is not None:
                raise self._dead()
            if self._up:
                await self.publish(subject, data, headers, reply_to)
                return
            if not self._held or self._held_bytes + size <= self.options.reconnect_buffer:
                break
            self._room.clear()
            await self._room.wait()
        self._held.append((subject, data, reply_to, headers))
        self._held_bytes += size

    def _dead(self) -> Exception:
        lost = self._lost
        if isinstance(lost, ClosedError) or lost is None:
            return ClosedError("bus is closed")
        if isinstance(lost, Disconnected):
            return Disconnected(str(lost))  # reconnecting gave up
        return BrokenLinkError(f"bus connection is broken: {lost}")

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the broker has processed everything published so far; while the
        bus reconnects, that includes waiting for the new link (within ``timeout``)."""
        if self._lost is not None:
            raise self._dead()
        if not self._up:
            async with asyncio.timeout(timeout):
                await self._wait_up()
        fut: asyncio.Future[None] = self._loop.create_future()
        self._pongs.append(fut)
        try:
            try:
                self._link.send(PING)
            except ConnectionClosed:
                if self._dialer is None:
                    raise
                # The link is going; the reconnect sends a PING for every waiting flush.
            async with asyncio.timeout(timeout):
                if self._up and self._link.write_blocked:
                    await self._link.drain()
                await fut
        finally:
            # Left early (time-out, cancel, a failed drain): nobody will read the answer.
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()

    async def _wait_up(self) -> None:
        """Until a link is up; raises what ended the bus if it ends instead."""
        while not self._up:
            if self._lost is not None:
                raise self._dead()
            await self._connected.wait()
        if self._lost is not None:
            raise self._dead()

    # --- subscribing ------------------------------------------------------------------

    def subscribe(
        self,
        subject: str,
        queue: str | None = None,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_bytes: int = DEFAULT_MAX_BYTES,
        overflow: str = "block",
        callback: Callback | None = None,
        model: Any = None,
        max_concurrency: int = 1,
    ) -> Subscription:
        """Subscribe to ``subject`` (``*`` and ``>`` wildcards allowed).

        Subscriptions sharing a ``queue`` name split the messages between them. The
        result is an async iterator and an async context manager; with ``callback`` the
        bus instead calls ``await callback(msg)`` for each message, in a task it owns and
        stops on :meth:`close`: one at a time, or up to ``max_concurrency`` at once.

        With ``model`` (a pydantic model, msgspec struct, dataclass...: docs/services.md)
        the subscription is a :class:`~asyncipc.subscription.TypedSubscription`: each
        message's ``body`` is its payload decoded by its ``content-type``, ``data`` still
        the bytes; one that does not decode is skipped, counted in ``sub.invalid`` and
        logged.
        """
        validate_pattern(subject)
        if queue is not None:
            validate_queue(queue)
        policy = OVERFLOW_POLICIES.get(overflow)
        if policy is None:
            raise ConfigurationError(
                f"overflow must be one of {sorted(OVERFLOW_POLICIES)}, not {overflow!r}"
            )
        if max_pending < 1 or max_bytes < 1:
            raise ConfigurationError(
                f"max_pending and max_bytes must be positive, not {max_pending} and {max_bytes}"
            )
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be at least 1, not {max_concurrency}")
        if self._closing or self._lost is not None:
            raise self._dead()
        self._next_sid += 1
        sid = self._next_sid
        if model is None:
            sub = Subscription(self, sid, subject, queue, max_pending, max_bytes, policy)
        else:
            sub = TypedSubscription(
                self, sid, subject, queue, max_pending, max_bytes, policy, model
            )
        # Registered before the SUB goes out: an in-process broker answers a refusal
        # (ERR naming the sid) within the send.
        self._subs[sid] = sub
        if (
            callback is not None
            and self._tracing is not None
            and not getattr(callback, "asyncipc_traced", False)
        ):
            callback = self._tracing.wrap(subject, callback, handler=False)
        if self._up:  # else the reconnect sends it, with every other subscription
            try:
                self._link.send(Sub(sid, subject, queue, policy, max_pending, max_bytes))
            except BaseException:
                self._subs.pop(sid, None)
                raise
        if callback is not None:
            # The pool runs callbacks in this context (its first worker's) inline too.
            ctx = contextvars.copy_context()
            run = (
                self._run_callback(sub, callback)
                if max_concurrency == 1
                else run_pool(sub, callback, max_concurrency, self._tasks, ctx)
            )
            task = self._loop.create_task(run, name=f"asyncipc callback {subject}", context=ctx)
            sub._task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return sub

    async def _run_callback(self, sub: Subscription, callback: Callback) -> None:
        try:
            async for msg in sub:
                try:
                    await callback(msg)
                except Exception:
                    log.exception("callback for %r raised", sub.subject)
        except ConnectionClosed:
            pass
        except SlowConsumer as exc:
            log.warning("%s", exc)

    def handler(
        self,
        subject: str,
        queue: str | None = None,
        *,
        expose_errors: bool = False,
        max_concurrency: int = DEFAULT_HANDLER_CONCURRENCY,
        **subscribe_options: Any,
    ) -> Callable[[H], H]:
        """Decorate ``async def f(msg) -> bytes`` to serve requests on ``subject``.

        Typed: ``async def quote(q: Quote) -> Price`` (a first parameter annotated with a
        model) gets the request decoded by its ``content-type`` (JSON when none) and its
        result is sent encoded the same way; a body that does not validate is answered
        with a :class:`~asyncipc.ServiceError` naming the field, without calling ``f``. A
        second parameter, if any, receives the :class:`~asyncipc.Message`. A first
        parameter annotated ``Message``, or not at all, is the bytes handler below,
        unchanged (docs/services.md).

        Up to ``max_concurrency`` requests (default 64) are handled at once, each in a
        task of its own; ``max_concurrency=1`` handles them one at a time, in order.

        The return value is the reply: ``bytes`` (or ``bytearray``, ``memoryview``), or
        ``None`` for an empty body. The requester gets :class:`~asyncipc.ServiceError`
        at once, never a time-out, when ``f``:

        - raises :class:`~asyncipc.ServiceError` itself: its text is the message, sent on
          purpose (``raise asyncipc.ServiceError(f"unknown sku {sku!r}")``);
        - raises anything else: the requester reads only ``internal error`` and an error
          id, and the exception is logged here with that id. ``expose_errors=True``
          sends ``"ExceptionType: text"`` instead, for services whose callers are
          trusted (tests, one team's own processes): exception text can carry paths,
          queries and secrets, and even the type names the libraries behind the service;
        - returns something else (a ``str``, a ``dict``...): the message names its type.

        The function is returned unchanged; use :meth:`serve` to get the subscription (to
        stop one service with :meth:`Subscription.drain` without closing the bus).
        """

        def decorate(fn: H) -> H:
            self.serve(
                subject,
                fn,
                queue,
                expose_errors=expose_errors,
                max_concurrency=max_concurrency,
                **subscribe_options,
            )
            return fn

        return decorate

    def serve(
        self,
        subject: str,
        fn: Handler | Callable[..., Awaitable[Any]],
        queue: str | None = None,
        *,
        expose_errors: bool = False,
        max_concurrency: int = DEFAULT_HANDLER_CONCURRENCY,
        stats: EndpointStats | None = None,
        **subscribe_options: Any,
    ) -> Subscription:
        """Serve requests on ``subject`` with ``fn``, as :meth:`handler` does; returns the
        subscription, so that ``await sub.drain()`` stops this service alone, answering
        the requests it already has. ``stats`` (package-internal: a Service's endpoint)
        counts requests, errors and processing time."""

        serve = responder(subject, fn, expose_errors=expose_errors, stats=stats)
        if self._tracing is not None:  # a SERVER span around the handler and its reply
            serve = self._tracing.wrap(subject, serve, handler=True)
        return self.subscribe(
            subject, queue, callback=serve, max_concurrency=max_concurrency, **subscribe_options
        )

    def _unsubscribe(self, sub: Subscription) -> None:
        if self._subs.pop(sub.sid, None) is not None and self._up:
            self._link.send(Unsub(sub.sid))

    async def _drain_sub(self, sub: Subscription) -> None:
        """UNSUB, keep taking what the broker had already sent, then end ``sub``."""
        if not self._up or sub.sid not in self._subs:
            self._subs.pop(sub.sid, None)  # a reconnect must not bring it back
            sub._end()
            return
        self._link.send(Unsub(sub.sid))
        # Only what is in flight can still come: let it land even in a full queue.
        sub.max_pending = sub.max_bytes = 1 << 62
        if sub in self._blocked:
            sub._blocking = False
            self._sub_unblocked(sub)
        try:
            await self.flush()  # the PONG comes after every MSG sent before our UNSUB
        finally:
            self._subs.pop(sub.sid, None)
            sub._end()

    def _forget(self, sub: Subscription) -> None:
        """A subscription cut itself off (overflow="error"): tell the broker."""
        with contextlib.suppress(ConnectionClosed):
            self._unsubscribe(sub)

    def _sub_blocked(self, sub: Subscription) -> None:
        if not self._blocked:
            self._link.pause_reading()
        self._blocked.add(sub)

    def _sub_unblocked(self, sub: Subscription) -> None:
        self._blocked.discard(sub)
        if not self._blocked:
            self._link.resume_reading()

    # --- requests ---------------------------------------------------------------------

    async def stream(
        self, name: str, subjects: list[str] | str | None = None, **config: Any
    ) -> Stream:
        """The stream ``name`` on the broker, created if it does not exist (with
        ``subjects`` and the options of :class:`~asyncipc.streams.StreamConfig`:
        ``max_msgs``, ``max_bytes``, ``max_age``, ``max_msgs_per_subject``, ``discard``,
        ``duplicate_window``, ``storage``, ``fsync``). With only a name it looks the
        stream up (:class:`~asyncipc.StreamNotFound`). See ``docs/streams.md``."""
        return await open_stream(self, name, subjects, config)

    async def streams(self) -> list[StreamInfo]:
        """Every stream on the broker, with its counts."""
        return await list_streams(self)

    @overload
    async def request(
        self,
        subject: str,
        data: Any = b"",
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 1.0,
        response: None = None,
        encoding: str | None = None,
    ) -> Message: ...

    @overload
    async def request(
        self,
        subject: str,
        data: Any = b"",
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 1.0,
        response: type[T],
        encoding: str | None = None,
    ) -> T: ...

    async def request(
        self,
        subject: str,
        data: Any = b"",
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 1.0,
        response: Any = None,
        encoding: str | None = None,
    ) -> Any:
        """Publish ``data`` and wait for the first reply.

        Raises :class:`~asyncipc.NoResponders` at once if nobody subscribes to
        ``subject``, :class:`~asyncipc.RequestTimeout` (a ``TimeoutError``) if no reply
        comes within ``timeout`` seconds, :class:`~asyncipc.ServiceError` if the
        responder's handler raised.

        Typed (docs/services.md): ``data`` may be a model (pydantic, msgspec, a dataclass,
        a dict or list), sent as JSON, or msgpack with ``encoding="msgpack"``, with its
        ``content-type`` header; with ``response=Model`` the reply is decoded (by its
        ``content-type``) and returned as a ``Model``, or :class:`~asyncipc.InvalidBody`
        raised naming the field that failed. Without ``response`` the reply is the
        :class:`~asyncipc.Message`.
        """
        if response is not None or encoding is not None:
            return await self._typed_request(subject, data, headers, timeout, response, encoding)
        if not self._inbox_sid:
            if self._lost is not None:
                raise self._dead()
            self._next_sid += 1
            self._inbox_sid = self._next_sid
            if self._up:  # else the reconnect subscribes it
                self._link.send(Sub(self._inbox_sid, self._inbox_prefix + "*"))
        self._next_request += 1
        token = str(self._next_request)  # compiled, a primitive; a format spec is a call
        fut: asyncio.Future[Message] = self._loop.create_future()
        loop = self._loop
        deadline = loop.time() + max(timeout, 0.0) if timeout < math.inf else math.inf
        self._requests[token] = (fut, subject, deadline, timeout)
        if deadline < self._expiry_at:
            self._arm_expiry(deadline)
        traced = self._tracing.start_request(subject) if self._tracing is not None else None
        failure: BaseException | None = None
        try:
            # Plain decimal, never 1e-05 (docs/protocol.md §12); none for a request
            # without a finite time-out.
            waits = format_timeout(timeout)
            sent_headers = headers if waits is None else {**(headers or {}), TIMEOUT_HEADER: waits}
            self._unchecked = inbox = self._inbox_prefix + token  # valid: ours, digits
            await self.publish(subject, data, sent_headers, inbox)
            return await fut
        except BaseException as exc:
            failure = exc
            raise
        finally:
            del self._requests[token]
            if traced is not None:
                self._tracing.end_request(traced, failure)  # type: ignore[union-attr]

    async def _typed_request(
        self,
        subject: str,
        data: Any,
        headers: dict[str, str] | None,
        timeout: float,
        response: Any,
        encoding: str | None,
    ) -> Any:
        """:meth:`request` with ``response=`` or ``encoding=``: kept apart so that the
        bytes request pays one comparison for them."""
        from .typed import CONTENT_TYPE_HEADER, codec_for, content_type_of, encoding_content_type

        if encoding is not None:
            headers = {**(headers or {}), CONTENT_TYPE_HEADER: encoding_content_type(encoding)}
        reply = await self.request(subject, data, headers=headers, timeout=timeout)
        if response is None:
            return reply
        codec = codec_for(response)
        try:
            return codec.decode(reply.data, content_type_of(reply.headers))
        except InvalidBody as exc:
            raise InvalidBody(
                f"the reply to {subject!r} is not a valid {codec.name}: {exc}"
            ) from None

    # Time-outs share one timer, armed for the earliest deadline of a request in flight.
    # A request that ends does not touch it: most requests are answered long before their
    # time-out, and a timer per request (call_later, then cancel) cost ~2 us of each one.
    # When the timer fires it fails what is due and re-arms for the next deadline, so it
    # fires about once per time-out period, scanning only the requests still in flight.

    def _arm_expiry(self, deadline: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = deadline
        self._expiry = self._loop.call_at(deadline, self._expire_due)

    def _expire_due(self) -> None:
        self._expiry = None
        self._expiry_at = math.inf
        # A timer may fire a hair before its time (asyncio's clock resolution).
        now = self._loop.time() + 1e-6
        earliest = math.inf
        for fut, subject, deadline, timeout in self._requests.values():
            if fut.done():
                continue
            if deadline <= now:
                _expire(fut, subject, timeout)
            elif deadline < earliest:
                earliest = deadline
        if earliest < math.inf:
            self._arm_expiry(earliest)

    def _reply_received(self, subject: str, data: bytes, headers: Headers | None) -> None:
        entry = self._requests.get(subject[len(self._inbox_prefix) :])
        if entry is None:
            return  # late reply to a request that timed out, or a second responder
        fut, asked, _, _ = entry
        if fut.done():
            return
        failure = reply_error(asked, headers) if headers else None
        if failure is not None:
            if type(failure) is PermissionDenied:
                self.refused += 1
            fut.set_exception(failure)
        else:
            fut.set_result(Message(subject, data, headers, None, self))

    # --- closing ----------------------------------------------------------------------

    async def close(self) -> None:
        """Drain, then close: what was published is delivered, callbacks finish the
        messages they already have, then the link closes. Bounded by ``drain_timeout``.

        Cancelling ``close()`` does not cut this short: the drain and the clean-up still
        happen (within that bound), then the cancellation is raised. A callback of this
        bus may call it too: the drain then does not wait for that callback."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        await shielded(self._shut_down(asyncio.current_task()))

    async def _shut_down(self, caller: asyncio.Task[Any] | None) -> None:
        # Runs in a task of its own (see _shield): ``caller`` is the task that asked,
        # which may be one of our callbacks; waiting for it would wait for ourselves.
        reconnecting = self._reconnecting
        if reconnecting is not None:
            reconnecting.cancel()
            await asyncio.wait([reconnecting])
        try:
            with anyio.move_on_after(self.options.drain_timeout) as drained:
                await self._drain(caller)
            if drained.cancelled_caught:
                log.debug("%s: drain ended early: time-out", self.url)
        except (ConnectionClosed, BrokerError) as exc:
            log.debug("%s: drain ended early: %r", self.url, exc)
        finally:
            tasks = [task for task in self._tasks if task is not caller]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            self._link.close()
            self.link_lost(ClosedError("bus is closed"))
            with anyio.move_on_after(self.options.drain_timeout) as waited:
                await self._link.wait_closed()
            if waited.cancelled_caught:
                # The peer never acknowledged the close (a stalled socket): let go of it.
                self._link.abort()
            for cb in self._on_close:
                await cb()
            self._closed.set()

    async def _drain(self, caller: asyncio.Task[Any] | None) -> None:
        if not self._up:
            return  # no link to drain through: what was held is lost (logged by _end)
        subs = list(self._subs.values())
        for sub in subs:
            self._link.send(Unsub(sub.sid))
        # Let what is in flight land even in full queues: no new messages can come now.
        for sub in subs:
            sub.max_pending = sub.max_bytes = 1 << 62
        self._blocked.clear()
        self._link.resume_reading()
        await self.flush()  # everything sent before our UNSUBs is now queued
        for sub in subs:
            self._subs.pop(sub.sid, None)
            sub._end()
        # Until no callback is left: a runner with max_concurrency > 1 starts tasks for
        # what was still queued while we wait.
        while callbacks := {task for task in self._tasks if task is not caller}:
            await asyncio.wait(callbacks)
        await self.flush()  # replies the callbacks published have reached the broker

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _as_bytes(data: Any) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, str):
        raise TypeError("data must be bytes, not str: encode it first (data.encode())")
    raise TypeError(f"data must be bytes, not {type(data).__name__}")


def _as_body(data: Any, headers: Headers | None) -> tuple[bytes, Headers | None]:
    """A payload that is not ``bytes``: bytes-like as is; a model, dataclass, dict or
    list encoded as the ``content-type`` header says (JSON, and the header added, when
    there is none). A ``str`` stays an error: its encoding is the caller's choice."""
    from .typed import CONTENT_TYPE_HEADER, JSON, encode, is_model_value

    if not is_model_value(data):
        return _as_bytes(data), headers

    ctype = headers.get(CONTENT_TYPE_HEADER) if headers else None
    if ctype is None:
        headers = {**(headers or {}), CONTENT_TYPE_HEADER: JSON}
        ctype = JSON
    return encode(data, ctype), headers
