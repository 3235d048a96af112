"""The broker's view of one connected client: handshake, keep-alive, its subscriptions.

A session is the :class:`~asyncipc.link.LinkReceiver` of one link. It checks the HELLO,
turns SUB/UNSUB into routes, answers PING, and hands every PUB to the broker's fan-out.
Misbehaviour is answered with an ERR frame naming the problem, then a hang-up; only this
session ends, the broker and every other client carry on.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Protocol

from ._stats import BrokerStats
from .errors import ConnectionClosed, InvalidSubject
from .link import Link
from .options import BrokerOptions
from .protocol import (
    DEFAULT_MAX_FRAME,
    PONG,
    PROTOCOL_VERSION,
    Err,
    ErrorCode,
    Frame,
    Headers,
    Hello,
    Ping,
    Pong,
    Pub,
    Sub,
    Unsub,
    Welcome,
)
from .protocol.system import RESERVED_PREFIX, allowed_signals
from .router import Route, Router
from .subjects import validate_pattern, validate_queue, validate_subject

__all__ = ["Session", "SessionHost"]

log = logging.getLogger("asyncipc.broker")


def _reserved(subject: str, reply: str | None) -> bool:
    return subject.startswith(RESERVED_PREFIX) or (
        reply is not None and reply.startswith(RESERVED_PREFIX)
    )


class SessionHost(Protocol):
    """What a :class:`Session` needs of the broker it belongs to (package-internal).

    :class:`~asyncipc.Broker` is the one implementation. Sessions depend on this interface
    rather than on the broker module, so that imports point one way: the broker imports
    its sessions, never the reverse.
    """

    options: BrokerOptions
    stats: BrokerStats
    router: Router[Session]
    server_id: str

    def publish(
        self,
        subject: str,
        data: bytes | None,
        reply: str | None,
        headers: Headers | None,
        pub: Pub | None,
        source: Session | None,
    ) -> None:
        """Route a message (see :meth:`Broker.publish`)."""
        ...

    def system_publish(
        self,
        session: Session,
        subject: str,
        data: bytes | None,
        reply: str | None,
        headers: Headers | None,
        pub: Pub | None,
    ) -> None:
        """A PUB on a reserved ``$sys.`` subject, or with a ``$sys.`` reply subject."""
        ...

    def apply_overflow(self, route: Route[Session], source: Session | None) -> bool:
        """The route's client is behind: apply its policy. True to deliver anyway."""
        ...

    def stream_request(
        self,
        session: Session,
        subject: str,
        data: bytes,
        reply: str | None,
        headers: Headers | None,
    ) -> None:
        """A PUB on ``$sys.stream.``: the streams API."""
        ...

    def monitor_request(self, subject: str, data: bytes, reply: str) -> None:
        """A request on ``$sys.monitor.``: the broker's figures."""
        ...

    def clients(self) -> list[Session]:
        """The sessions connected now."""
        ...

    def session_closed(self, session: Session) -> None:
        """``session`` has ended."""
        ...


class Session:
    """One client link as the broker sees it."""

    def __init__(self, broker: SessionHost, link: Link, client_id: int) -> None:
        self.broker = broker
        self.link = link
        self.client_id = client_id
        self.name = ""
        self.allowed_signals: frozenset[str] = frozenset()
        """Signal names this client lets others send it (HELLO ``signals``)."""
        self.open = False
        self.closed = False
        self.routes: dict[int, Route[Session]] = {}
        self.counters = broker.stats.connection(link.transport)
        """Where this client's traffic is counted: its own TransportStats, which the
        broker sums by transport (``BrokerStats.transport``) and /connz shows alone."""
        self.start = time.time()
        """When the broker took this link (wall clock)."""
        # Backpressure bookkeeping (overflow="block"): sessions whose reading we paused
        # because *we* are slow, and the slow sessions that paused *us*.
        self.blocked_sources: set[Session] = set()
        self.blocked_by: set[Session] = set()
        loop = asyncio.get_running_loop()
        self._loop = loop
        opts = broker.options
        self._pinged_at: float | None = None  # when the last unanswered ping went out
        self._timer: asyncio.TimerHandle | None = loop.call_later(
            opts.handshake_timeout, self._handshake_expired
        )

    def __repr__(self) -> str:
        return f"<Session {self.client_id} {self.describe()}>"

    def describe(self) -> str:
        who = self.link.peer.describe()
        return (
            f"client {self.client_id} ({self.name}, {who})"
            if self.name
            else f"client {self.client_id} ({who})"
        )

    # --- LinkReceiver -----------------------------------------------------------------

    def pub_received(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        # Only in-process links call this, for a Bus that validated the subjects already.
        if self.open:
            # One character compared on the hot path; $sys. subjects are the broker's own.
            if (subject[0] == "$" or (reply is not None and reply[0] == "$")) and _reserved(
                subject, reply
            ):
                self.broker.system_publish(self, subject, data, reply, headers, None)
                return
            self.broker.publish(subject, data, reply, headers, None, self)
        else:
            self._handshake(Pub(subject, data, reply, headers))

    def msg_received(
        self, sid: int, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        self.fail(ErrorCode.PROTOCOL, "unexpected MSG frame from a client")

    def frame_received(self, frame: Frame) -> None:
        if type(frame) is Pub and self.open:
            try:
                validate_subject(frame.subject)
                if frame.reply is not None:
                    validate_subject(frame.reply)
            except InvalidSubject as exc:
                self.send_error(ErrorCode.INVALID_SUBJECT, str(exc))
                return
            subject, reply = frame.subject, frame.reply
            if (subject[0] == "$" or (reply is not None and reply[0] == "$")) and _reserved(
                subject, reply
            ):
                self.broker.system_publish(self, subject, None, reply, frame.headers, frame)
                return
            self.broker.publish(frame.subject, None, frame.reply, frame.headers, frame, self)
        elif not self.open:
            self._handshake(frame)
        elif type(frame) is Sub:
            self._subscribe(frame)
        elif type(frame) is Unsub:
            route = self.routes.pop(frame.sid, None)
            if route is not None:
                self.broker.router.remove(route)
        elif type(frame) is Ping:
            self._send(PONG)
        elif type(frame) is Pong:
            pass  # liveness is tracked by the link's last_received
        elif type(frame) is Err:
            log.info("%s reported error %s: %s", self.describe(), frame.code, frame.message)
        else:
            self.fail(
                ErrorCode.PROTOCOL, f"unexpected {type(frame).__name__.upper()} frame from a client"
            )

    def link_lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            log.debug("%s disconnected: %s", self.describe(), exc)
        self._cleanup()

    def writing_resumed(self) -> None:
        sources, self.blocked_sources = self.blocked_sources, set()
        for src in sources:
            src.blocked_by.discard(self)
            if not src.blocked_by:
                src.link.resume_reading()

    # --- handshake and keep-alive ---------------------------------------------------------

    def _handshake(self, frame: Frame) -> None:
        if not isinstance(frame, Hello):
            self.fail(
                ErrorCode.PROTOCOL,
                f"expected HELLO as the first frame, got {type(frame).__name__.upper()}",
            )
            return
        fields = frame.fields
        version = fields.get("version")
        if type(version) is not int or version != PROTOCOL_VERSION:  # not True, not 1.0
            self.fail(
                ErrorCode.VERSION,
                f"unsupported protocol version {version!r}; this broker speaks {PROTOCOL_VERSION}",
            )
            return
        expected = self.broker.options.token
        if expected is not None:
            token = fields.get("token")
            if not isinstance(token, str) or not hmac.compare_digest(
                token.encode(), expected.encode()
            ):
                self.fail(ErrorCode.AUTH, "token required" if token is None else "invalid token")
                return
        name = fields.get("name")
        self.name = name[:100] if isinstance(name, str) else ""
        client_max = fields.get("max_frame")
        opts = self.broker.options
        # A client that does not say is held to the documented default, not to our own
        # maximum: one sized to the spec (8 MiB) must never meet a larger MSG because
        # this broker was started with a larger --max-frame (docs/protocol.md, §5).
        if type(client_max) is not int or client_max < 1024:  # not True, not 1e6
            client_max = DEFAULT_MAX_FRAME
        self.link.max_frame = min(opts.max_frame, client_max)
        self.open = True
        welcome = {
            "version": PROTOCOL_VERSION,
            "server": "asyncipc",
            "server_id": self.broker.server_id,
            "client_id": self.client_id,
            "max_frame": opts.max_frame,
            # Read back from the link: a datagram link caps it at what a datagram holds.
            "client_max_frame": self.link.max_frame,
            "high_water": opts.high_water,
            "ping_interval": opts.ping_interval,
        }
        if "signals" in fields:
            self.allowed_signals, ignored = allowed_signals(fields["signals"])
            if ignored:
                log.info("%s: ignored HELLO signals %s", self.describe(), ", ".join(ignored))
            welcome["signals"] = sorted(self.allowed_signals)  # what is in effect
        self._send(Welcome(welcome))
        self._cancel_timer()
        if opts.ping_interval > 0 and not self.link.in_process:
            self._timer = self._loop.call_later(opts.ping_interval, self._keepalive)
        log.debug("%s connected", self.describe())

    def _handshake_expired(self) -> None:
        self._timer = None
        if not self.open and not self.closed:
            timeout = self.broker.options.handshake_timeout
            self.fail(ErrorCode.HANDSHAKE_TIMEOUT, f"no HELLO within {timeout:g} s")

    def _keepalive(self) -> None:
        self._timer = None
        if self.closed:
            return
        opts = self.broker.options
        now = self._loop.time()
        last = self.link.last_received
        idle = now - last
        # A client we paused cannot be heard from; its silence is our doing.
        if self.blocked_by:
            idle = 0.0
        # Cut off only a peer that was pinged and stayed silent: a timer that fired late
        # (a busy loop) must not skip the ping.
        pinged = self._pinged_at is not None and self._pinged_at >= last
        if idle >= opts.ping_interval * opts.dead_peer_factor and pinged:
            self.fail(ErrorCode.PEER_TIMEOUT, f"no traffic for {idle:.1f} s (ping unanswered)")
            return
        if idle >= opts.ping_interval:
            self._send(Ping())
            if not pinged:
                self._pinged_at = now
        self._timer = self._loop.call_later(opts.ping_interval, self._keepalive)

    # --- subscriptions --------------------------------------------------------------------

    def _subscribe(self, frame: Sub) -> None:
        try:
            validate_pattern(frame.subject)
            if frame.queue is not None:
                validate_queue(frame.queue)
        except InvalidSubject as exc:
            self.send_error(ErrorCode.INVALID_SUBJECT, str(exc), frame.sid)
            return
        if frame.sid in self.routes:
            self.send_error(
                ErrorCode.SID_IN_USE, f"subscription id {frame.sid} is already in use", frame.sid
            )
            return
        route = Route(
            self,
            frame.sid,
            frame.subject,
            frame.queue,
            frame.overflow,
        )
        self.routes[frame.sid] = route
        self.broker.router.add(route)

    def drop_route(self, route: Route[Session]) -> None:
        """Remove one of our routes (the slow-consumer cut-off)."""
        if self.routes.pop(route.sid, None) is not None:
            self.broker.router.remove(route)

    # --- errors and closing -----------------------------------------------------------------

    def _send(self, frame: Frame) -> None:
        try:
            self.link.send(frame)
        except ConnectionClosed:
            pass  # link_lost does the clean-up

    def send_error(self, code: ErrorCode, message: str, sid: int = 0) -> None:
        """An ERR frame that does not end the session (a refused frame)."""
        log.info("refused a frame from %s: %s", self.describe(), message)
        self._send(Err(code, message, sid))

    def fail(self, code: ErrorCode, message: str) -> None:
        """Tell the client what was wrong, then disconnect it. One log line."""
        if self.closed:
            return
        log.warning("closing %s: %s", self.describe(), message)
        self._send(Err(code, message))
        self.link.close()
        self._cleanup()

    def close(self) -> None:
        """Orderly close (broker shutdown): buffered messages are still written out,
        followed by an ERR SHUTDOWN so the client knows why the connection ends."""
        if not self.closed:
            if self.open:
                self._send(Err(ErrorCode.SHUTDOWN, "broker is shutting down"))
            self.link.close()
            self._cleanup()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cleanup(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.open = False
        self._cancel_timer()
        router = self.broker.router
        for route in self.routes.values():
            router.remove(route)
        self.routes.clear()
        self.writing_resumed()  # nobody waits on a session that is gone
        for target in self.blocked_by:
            target.blocked_sources.discard(self)
        self.blocked_by.clear()
        self.broker.session_closed(self)
