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
from collections.abc import Callable
from typing import Final, Protocol

from ._access import Access, check_password, password_known, password_pool
from ._logsafe import peer_log, printable
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
    Overflow,
    Ping,
    Pong,
    Pub,
    Sub,
    Unsub,
    Welcome,
)
from .protocol.system import (
    ERROR_HEADER,
    PERMISSION_REASON,
    REASON_HEADER,
    REFUSED_STATUS,
    RESERVED_PREFIX,
    STATUS_HEADER,
    allowed_signals,
)
from .router import Route, Router
from .subjects import known_valid, validate_pattern, validate_queue, validate_subject
from .users import User, identify

__all__ = ["Request", "Session", "SessionHost"]

log = logging.getLogger("asyncipc.broker")

_HELD_MAX: Final = 64
"""Frames a client may send after its HELLO while its password is being checked."""


def _reserved(subject: str, reply: str | None) -> bool:
    return subject.startswith(RESERVED_PREFIX) or (
        reply is not None and reply.startswith(RESERVED_PREFIX)
    )


Request = tuple["Session", float, "Headers | None"]
"""A request in flight as the broker keeps it (``_inflight.InFlight``): the session that
asked, when the broker routed it (monotonic clock), its headers."""


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
    awaited: dict[str, Request]
    """Reply subjects of requests in flight, each validated when its request came: a PUB
    on one (the answer) need not be validated again."""

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

    def session_opened(self, session: Session) -> None:
        """``session`` completed its handshake (it no longer counts as pending)."""
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
        # Its link if it is a socket's (unix, tcp, tls, pipes; a StreamLink), the common
        # case: compiled, Broker.publish then reads its attributes and calls deliver
        # natively, where the Link interface (not a native class) costs a lookup by name
        # each. Imported here, not with this module: its transport has loaded it by now,
        # and ``import asyncipc`` loads no transport (tests/test_imports.py).
        from .transports._stream.link import StreamLink

        self.stream: StreamLink | None = link if isinstance(link, StreamLink) else None
        self._awaited = broker.awaited  # read on every PUB: held, not looked up
        # Bound once: compiled, a call through the SessionHost protocol looks the method
        # up by name on every PUB.
        self._publish: Callable[
            [str, bytes | None, str | None, Headers | None, Pub | None, Session | None], None
        ] = broker.publish
        self.awaiting = 0
        """Its requests in the broker's table of requests in flight (``InFlight``)."""
        # --- users and permissions (issue 13, docs/security.md) ---
        self.user: User | None = None
        """The user this client connected as; ``None``: no users, the token, in-process."""
        self.access: Access | None = None
        """Its permissions with their caches; ``None``: it may do everything."""
        self._verifying: asyncio.Future[bool] | None = None
        self._held: list[Frame] | None = None  # frames that came while its password was checked
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
        self._block_timer: asyncio.TimerHandle | None = None  # see holding_publishers

    def __repr__(self) -> str:
        return f"<Session {self.client_id} {self.describe()}>"

    def describe(self) -> str:
        who = self.link.peer.describe()
        if self.user is not None:
            who = f"user {self.user.name!r}, {who}"
        return (
            # The name is the client's to choose: escaped, so that it cannot forge lines.
            f"client {self.client_id} ({printable(self.name)}, {who})"
            if self.name
            else f"client {self.client_id} ({who})"
        )

    # --- LinkReceiver -----------------------------------------------------------------

    def pub_received(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        # Only in-process links call this, for a Bus that validated the subjects already.
        if self.open:
            access = self.access
            if (
                access is not None
                and (reply is not None or access.pub_cache.get(subject, False) is not None)
                and self._refused(subject, reply)
            ):
                return
            # One character compared on the hot path; $sys. subjects are the broker's own.
            if (subject[0] == "$" or (reply is not None and reply[0] == "$")) and _reserved(
                subject, reply
            ):
                self.broker.system_publish(self, subject, data, reply, headers, None)
                return
            self._publish(subject, data, reply, headers, None, self)
        else:
            self._handshake(Pub(subject, data, reply, headers))

    def msg_received(
        self, sid: int, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        self.fail(ErrorCode.PROTOCOL, "unexpected MSG frame from a client")

    def frame_received(self, frame: Frame) -> None:
        if type(frame) is Pub and self.open:
            subject, reply = frame.subject, frame.reply
            try:
                # A subject known valid, or the reply subject of a request in flight (an
                # answer: that subject was validated as the request's reply), is not
                # validated again: an inbox costs the full check, and each round trip
                # brings its answer on a new one.
                if subject not in known_valid and subject not in self._awaited:
                    validate_subject(subject)
                if reply is not None:
                    validate_subject(reply)
            except InvalidSubject as exc:
                self.send_error(ErrorCode.INVALID_SUBJECT, str(exc))
                return
            # A restricted client's common case costs one dict lookup: an allowed subject,
            # cached, and no reply subject to check.
            access = self.access
            if (
                access is not None
                and (reply is not None or access.pub_cache.get(subject, False) is not None)
                and self._refused(subject, reply)
            ):
                return
            if (subject[0] == "$" or (reply is not None and reply[0] == "$")) and _reserved(
                subject, reply
            ):
                self.broker.system_publish(self, subject, None, reply, frame.headers, frame)
                return
            self._publish(frame.subject, None, frame.reply, frame.headers, frame, self)
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
            # Rate-limited too: a client can send as many ERR frames as it likes.
            peer_log().log(
                logging.INFO,
                "reported-error",
                "%s reported error %s: %s",
                self.describe(),
                frame.code,
                printable(frame.message),
                logger=log,
            )
        else:
            self.fail(
                ErrorCode.PROTOCOL, f"unexpected {type(frame).__name__.upper()} frame from a client"
            )

    def link_lost(self, exc: BaseException | None) -> None:
        if exc is not None:
            log.debug("%s disconnected: %s", self.describe(), exc)
        self._cleanup()

    def writing_resumed(self) -> None:
        if self._block_timer is not None:
            self._block_timer.cancel()
            self._block_timer = None
        sources, self.blocked_sources = self.blocked_sources, set()
        for src in sources:
            src.blocked_by.discard(self)
            if not src.blocked_by:
                src.link.resume_reading()

    # --- overflow="block": how long we may hold publishers back ---------------------------

    def holding_publishers(self) -> None:
        """Package-internal: we are slow and the broker has just paused a first publisher
        for our ``block`` subscriptions. Unless our buffer drains to the low-water mark
        (``writing_resumed``) within ``block_timeout``, we are cut off as slow."""
        timeout = self.broker.options.block_timeout
        if timeout > 0 and self._block_timer is None and not self.closed:
            self._block_timer = self._loop.call_later(timeout, self._block_expired)

    def _block_expired(self) -> None:
        """Held publishers back for ``block_timeout`` without catching up: cut off every
        ``block`` subscription (an ERR 101 each, as for ``overflow="error"``), counted,
        and let the publishers go. Progress is draining to the low-water mark, not any
        byte taken: a reader that takes one byte a second must not hold everyone."""
        self._block_timer = None
        if self.closed or not self.blocked_sources:
            return
        timeout = self.broker.options.block_timeout
        stats = self.broker.stats
        cut = [r for r in self.routes.values() if r.overflow is Overflow.BLOCK]
        for route in cut:
            self.drop_route(route)
            stats.slow_consumers += 1
            self._send(
                Err(
                    ErrorCode.SLOW_CONSUMER,
                    f"subscription {route.sid} on {route.subject!r} cut off as a slow "
                    f"consumer: it held its publishers back for {timeout:g} s without "
                    "catching up (block_timeout)",
                    route.sid,
                )
            )
        peer_log().warning(
            "slow-consumer",
            "%s: %d block subscription(s) cut off as slow consumers after holding "
            "%d publisher(s) back for %g s",
            self.describe(),
            len(cut),
            len(self.blocked_sources),
            timeout,
            logger=log,
        )
        self.writing_resumed()  # the publishers it held resume

    # --- handshake and keep-alive ---------------------------------------------------------

    def _handshake(self, frame: Frame) -> None:
        if self._held is not None:  # its password is being checked
            if len(self._held) >= _HELD_MAX:
                self.fail(ErrorCode.PROTOCOL, f"more than {_HELD_MAX} frames before WELCOME")
            else:
                self._held.append(frame)
            return
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
        token = fields.get("token")
        token_ok = (
            expected is not None
            and isinstance(token, str)
            and hmac.compare_digest(token.encode(), expected.encode())
        )
        users = self.broker.options.users
        if users:
            who = identify(
                users, fields, self.link.peer, token_ok=token_ok, in_process=self.link.in_process
            )
            if who.refusal is not None:
                self.fail(ErrorCode.AUTH, who.refusal)
                return
            if who.user is not None and who.password is not None:
                assert who.user.password_hash is not None
                if not password_known(who.password, who.user.password_hash):
                    self._check_password(fields, who.user, who.password)
                    return
            self._open(fields, who.user)
            return
        if expected is not None and not token_ok:
            self.fail(ErrorCode.AUTH, "token required" if token is None else "invalid token")
            return
        self._open(fields, None)

    def _open(self, fields: dict[str, object], user: User | None) -> None:
        """The client is who it says: WELCOME it."""
        self.set_user(user)
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
        welcome: dict[str, object] = {
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
        if user is not None:
            welcome["user"] = user.name
        if "signals" in fields:
            self.allowed_signals, ignored = allowed_signals(fields["signals"])
            if ignored:
                log.info(
                    "%s: ignored HELLO signals %s", self.describe(), printable(", ".join(ignored))
                )
            welcome["signals"] = sorted(self.allowed_signals)  # what is in effect
        self._send(Welcome(welcome))
        self.broker.session_opened(self)
        self._cancel_timer()
        if opts.ping_interval > 0 and not self.link.in_process:
            self._timer = self._loop.call_later(opts.ping_interval, self._keepalive)
        log.debug("%s connected", self.describe())

    # --- users and permissions (issue 13, docs/security.md) --------------------------------

    def _check_password(self, fields: dict[str, object], user: User, password: str) -> None:
        """Check the password off the event loop; frames that come meanwhile wait."""
        assert user.password_hash is not None
        self._held = []
        fut = self._loop.run_in_executor(
            password_pool(), check_password, password, user.password_hash
        )
        self._verifying = fut

        def checked(done: asyncio.Future[bool]) -> None:
            self._verifying = None
            if self.closed or done.cancelled():
                return
            held, self._held = self._held or [], None
            if done.exception() is not None or not done.result():
                self.fail(ErrorCode.AUTH, "unknown user or wrong password")
                return
            self._open(fields, user)
            for frame in held:
                if self.closed:
                    break
                self.frame_received(frame)

        fut.add_done_callback(checked)

    def set_user(self, user: User | None) -> None:
        """Connect this session as ``user`` with its permissions now (a reload calls it
        again with the user's new entry; the caches start over)."""
        self.user = user
        if user is None or user.permissions.unrestricted:
            self.access = None
        else:
            self.access = Access(user)

    def reapply(self) -> None:
        """Permissions changed (a configuration reload): drop every subscription the
        client may no longer have, each with an ERR naming it."""
        access = self.access
        if access is None:
            return
        for sid, route in list(self.routes.items()):
            why = access.subscribe_refusal(route.subject)
            if why is not None:
                self.drop_route(route)
                self.broker.stats.permission_denied += 1
                self.send_error(ErrorCode.PERMISSION, access.explain(why), sid)

    def _refused(self, subject: str, reply: str | None) -> bool:
        """Whether this PUB is refused; if so the client has been told: a request by a
        ``403`` reply its ``request`` raises as PermissionDenied, a plain publish by an
        ERR. Never a silent drop."""
        access = self.access
        assert access is not None
        why = access.publish_refusal(subject, reply)
        if why is None:
            return False
        self.broker.stats.permission_denied += 1
        if reply is not None and access.subscribe_refusal(reply) is None:
            log.info("refused a request from %s: %s", self.describe(), why)
            headers = {
                STATUS_HEADER: REFUSED_STATUS,
                REASON_HEADER: PERMISSION_REASON,
                ERROR_HEADER: why[:1000],
            }
            self.broker.publish(reply, b"", None, headers, None, None)
        else:
            self.send_error(ErrorCode.PERMISSION, why)
        return True

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
        if self.access is not None:
            why = self.access.subscribe_refusal(frame.subject)
            if why is not None:
                self.broker.stats.permission_denied += 1
                self.send_error(ErrorCode.PERMISSION, self.access.explain(why), frame.sid)
                return
        if frame.sid in self.routes:
            self.send_error(
                ErrorCode.SID_IN_USE, f"subscription id {frame.sid} is already in use", frame.sid
            )
            return
        limit = self.broker.options.max_subscriptions
        if len(self.routes) >= limit:
            self.send_error(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"subscription {frame.sid} on {frame.subject!r} refused: this connection "
                f"holds {len(self.routes)} subscriptions, the most allowed (max_subscriptions)",
                frame.sid,
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
        # Rate-limited: one connection can send a million frames to refuse.
        peer_log().log(
            logging.INFO,
            "refused",
            "refused a frame from %s: %s",
            self.describe(),
            message,
            logger=log,
        )
        self._send(Err(code, message, sid))

    def fail(self, code: ErrorCode, message: str) -> None:
        """Tell the client what was wrong, then disconnect it. One log line."""
        if self.closed:
            return
        # Rate-limited: every bad connection must not cost the operator a WARNING line.
        peer_log().warning(
            code.name.lower(), "closing %s: %s", self.describe(), message, logger=log
        )
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
        if self._verifying is not None:
            self._verifying.cancel()
            self._verifying = None
        self._held = None
        if self._block_timer is not None:
            self._block_timer.cancel()
            self._block_timer = None
        router = self.broker.router
        for route in self.routes.values():
            router.remove(route)
        self.routes.clear()
        self.writing_resumed()  # nobody waits on a session that is gone
        for target in self.blocked_by:
            target.blocked_sources.discard(self)
        self.blocked_by.clear()
        self.broker.session_closed(self)
