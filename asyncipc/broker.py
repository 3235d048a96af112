"""The broker: links in, router, flow control, links out.

A :class:`Broker` serves any number of listeners at once, on any mix of channels::

    async with asyncipc.Broker() as broker:
        await broker.listen("unix:///tmp/asyncipc.sock")
        await broker.listen("tcp://127.0.0.1:4222")
        await broker.serve_forever()

It never blocks on one client. A subscriber that falls behind meets its subscription's
overflow policy here too, on the broker's outbound buffer: ``block`` pauses reading from
the publishers that feed it until it catches up (backpressure reaches them through their
own sockets), ``drop_new``/``drop_oldest`` drop and count, ``error`` cuts the subscription
off with an ERR frame. The memory a slow client can pin is therefore bounded by the
high-water mark plus what one read from each publisher can hold.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio

from . import _system
from ._inflight import InFlight
from ._limits import ConnectionLimits
from ._logsafe import limit_accept_errors
from ._monitor import Monitor
from ._native import mypyc_attr
from ._session import Session
from ._shield import shielded
from ._stats import BrokerStats, TransportStats
from .errors import ClosedError, ConnectionClosed, FrameTooLarge
from .link import Link, Listener, PeerInfo
from .options import BrokerOptions
from .protocol import ErrorCode, Headers, Overflow, Pub
from .protocol.system import (
    DELIVER_SUBJECT_HEADER,
    NO_RESPONDERS_STATUS,
    STATUS_HEADER,
)
from .router import Route, Router
from .streams.manager import StreamManager
from .transports import URL, TransportOptions, lookup, parse_url

if TYPE_CHECKING:
    from .bridge import Bridge
    from .transports.pipe import PipeChild

__all__ = ["Broker", "BrokerAdapter", "BrokerStats", "Relay", "TransportStats"]

log = logging.getLogger("asyncipc.broker")

NO_RESPONDERS_HEADERS: Final = {STATUS_HEADER: NO_RESPONDERS_STATUS}
"""Sent, with an empty body, to the reply subject of a request nobody is subscribed to."""


class Relay(Protocol):
    """Something beyond this broker that its messages also go to (``add_relay``)."""

    def wants(self, subject: str) -> bool:
        """Whether a message on ``subject`` goes out through this relay."""
        ...

    def outbound(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        """A message published here: send it on. Must not block."""
        ...


class BrokerAdapter(Protocol):
    """A transport that serves a whole API in front of a broker rather than bare links.

    The HTTP and gRPC adapters (``asyncipc/adapters/``) register their schemes like any
    transport and implement this hook too: they need the broker itself (its token, its
    statistics, a way to attach the in-process buses that act for their callers), which
    :meth:`Transport.listen`'s ``accept`` callback does not give. :meth:`Broker.listen`
    calls :meth:`serve_broker` instead of ``listen`` for a transport that has it (it
    looks for the method: a protocol of the compiled build cannot be
    ``runtime_checkable``).
    """

    async def serve_broker(self, url: URL, broker: Broker, options: TransportOptions) -> Listener:
        """Serve ``broker``'s API at ``url``; the listener is closed by the broker."""
        ...


@mypyc_attr(allow_interpreted_subclasses=True)
class Broker:
    """Routes messages between every client of every listener. See the module docstring."""

    def __init__(self, options: BrokerOptions | None = None, **kwargs: Any) -> None:
        """``kwargs`` override fields of ``options`` (``Broker(token="s3cret")``)."""
        options = options or BrokerOptions()
        if kwargs:
            options = replace(options, **kwargs)
        self.options = options
        self.router: Router[Session] = Router()
        self._route_cache = self.router.cache  # publish()'s first try; see Router.cache
        self.stats = BrokerStats()
        self.server_id = os.urandom(8).hex()
        self._sessions: set[Session] = set()
        self._limits: ConnectionLimits[Session] = ConnectionLimits(options)
        self._listeners: list[Listener] = []
        self._next_client = 0
        self._closing = False
        self._closed: asyncio.Event | None = None
        # Requests a responder holds, so that close() can wait for their replies.
        self._inflight = InFlight()
        self.awaited = self._inflight.replies
        """Reply subjects of requests in flight (package-internal: ``SessionHost``)."""
        # Links of spawned children not yet adopted (a child adopts on its first write).
        self._unadopted: weakref.WeakSet[Link] = weakref.WeakSet()
        store = options.store
        if store is not None:
            store = os.fspath(store)
        self.streams = StreamManager(self, store)
        self._started = False
        self._relays: list[Relay] = []
        self._relaying = False
        self._stream_relay: Relay | None = None
        self._bridges: list[Bridge] = []
        self.joined_directories: set[str] = set()
        """Package-internal: the real paths of the directories ``file://`` joined this
        broker to (``transports/file.py`` refuses a second join of one). Kept here, not
        in a weak mapping keyed by broker: the compiled build's broker cannot be weakly
        referenced."""
        self.monitor = Monitor(self)
        """The broker's figures for ``/varz`` and friends (``docs/monitoring.md``)."""

    async def start(self) -> None:
        """Open the store: recover every stream and consumer under ``store``. Called by
        :meth:`listen` and ``async with``; call it yourself to use streams from an
        in-process bus before listening. Raises :class:`~asyncipc.StoreError` when the
        store directory cannot be read at all (a damaged stream is skipped and logged,
        see ``docs/streams.md``)."""
        if self._started:
            return
        self._started = True
        await self.streams.open()

    # --- lifecycle ----------------------------------------------------------------

    async def listen(self, url: str, *, ssl: Any = None) -> Listener:
        """Serve clients on ``url`` (any registered scheme). Returns the bound listener;
        its ``url`` has the real port when ``:0`` was asked for. Raises
        :class:`~asyncipc.ClosedError` once :meth:`close` has started, even mid-bind."""
        if self._closing:
            raise ClosedError("broker is closed")
        await self.start()
        limit_accept_errors(asyncio.get_running_loop())  # out of descriptors: no flood
        parsed = parse_url(url)
        transport = lookup(parsed.scheme)
        opts = self._transport_options(ssl=ssl or self.options.ssl)
        listener: Listener
        serve_broker = getattr(transport, "serve_broker", None)  # a BrokerAdapter
        if serve_broker is not None:
            listener = await serve_broker(parsed, self, opts)
        else:
            listener = await transport.listen(parsed, self.attach, opts)
        if self._closing:  # close() ran while we were binding: do not outlive it
            await listener.aclose()
            await listener.wait_closed()
            raise ClosedError("broker is closed")
        self._listeners.append(listener)
        log.info("listening on %s", listener.url)
        if self._limits.capped_by is not None and len(self._listeners) == 1:
            log.warning(
                "serving at most %d connections, not max_connections=%d: the file "
                "descriptor limit (RLIMIT_NOFILE, ulimit -n) is %d",
                self._limits.max_connections,
                self.options.max_connections,
                self._limits.capped_by,
            )
        return listener

    def _transport_options(self, ssl: Any = None) -> TransportOptions:
        opts = self.options
        return TransportOptions(
            ssl=ssl,
            high_water=opts.high_water,
            max_frame=opts.max_frame,
            max_hello=opts.max_hello,
            frame_timeout=opts.frame_timeout,
            frame_min_rate=opts.frame_min_rate,
        )

    @property
    def urls(self) -> list[str]:
        """The URLs of every listener."""
        return [listener.url for listener in self._listeners]

    @property
    def sessions(self) -> int:
        """Clients connected now."""
        return len(self._sessions)

    @property
    def peers(self) -> list[PeerInfo]:
        """Who is connected now (peer credentials where the channel tells)."""
        return [s.link.peer for s in self._sessions]

    @property
    def buffered(self) -> int:
        """Bytes held for clients that have not taken them yet: the memory slow
        subscribers pin in the broker. Bounded by the high-water mark (see module doc)."""
        return sum(s.link.buffered for s in self._sessions)

    def attach(self, link: Link) -> None:
        """Take a new link from a listener (or a caller that made one) as a client.

        A link over the connection limits (``max_connections``,
        ``max_connections_per_peer``, ``max_pending_handshakes``) is refused: it gets an
        ERR ``LIMIT`` naming the limit, then is closed; it never becomes a session."""
        if self._closing:
            link.abort()
            return
        refusal = self._limits.refusal(link)
        if refusal is not None:
            self._limits.refuse(link, refusal)
            self.stats.refused_connections += 1
            return
        self._next_client += 1
        self.stats.connections += 1
        session = Session(self, link, self._next_client)
        session.counters.connections += 1
        self._sessions.add(session)
        self._limits.admitted(session, link)
        link.set_receiver(session)

    @property
    def pending_handshakes(self) -> int:
        """Connections that have not completed their handshake yet."""
        return self._limits.pending

    def session_opened(self, session: Session) -> None:
        """Package-internal: ``session`` completed its handshake."""
        self._limits.opened(session)

    async def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, **popen_kwargs: Any
    ) -> PipeChild:
        """Start ``argv`` as a child service wired to this broker over inherited pipes.

        In the child, ``asyncipc.connect("pipe:")`` finds the pipes (named by
        ``$ASYNCIPC_PIPE_FDS``); its stdin, stdout and stderr stay its own. The broker
        adopts the child as a client when it first speaks; when the child exits, its
        session and subscriptions go. ``env`` (default: ours) and the other keyword
        arguments (``stdin``, ``cwd``, ...) go to :func:`asyncio.create_subprocess_exec`.
        Returns a :class:`~asyncipc.transports.pipe.PipeChild` (``process``, ``pid``,
        ``wait()``, ``link``). Raises :class:`~asyncipc.ClosedError` once :meth:`close`
        has started. See ``docs/transports.md``.
        """
        if self._closing:
            raise ClosedError("broker is closed")
        from .transports.pipe import spawn_child  # loaded on first use, like every channel

        opts = self._transport_options()
        child = await spawn_child(self.attach, argv, opts, env=env, **popen_kwargs)
        self._unadopted.add(child.link)
        return child

    async def bridge(
        self,
        url: str | Sequence[str],
        subjects: Sequence[str],
        *,
        wait: float | None = 5.0,
        **options: Any,
    ) -> Bridge:
        """Bridge ``subjects`` (patterns) to the NATS cluster at ``url``
        (``nats://h1:4222,h2:4222`` or a list of URLs): messages on them flow both ways,
        each once, and requests cross both ways. Returns the :class:`~asyncipc.bridge.Bridge`
        (``stats``, ``close()``); :meth:`close` closes it too. Waits up to ``wait`` seconds
        for the first connection, then keeps trying in the background. ``options``:
        ``max_pending``, ``backlog``, ``reply_timeout``, ``nats_options`` (see
        ``docs/bridge.md``). Needs ``pip install 'asyncipc[nats]'``."""
        if self._closing:
            raise ClosedError("broker is closed")
        from .bridge import Bridge  # nats-py is an extra: loaded on first use

        options.setdefault("drain_timeout", self.options.drain_timeout)
        bridge = Bridge(self, url, subjects, **options)
        self._bridges.append(bridge)
        await bridge.start(wait)
        return bridge

    @property
    def bridges(self) -> list[Bridge]:
        """The bridges to NATS this broker has (:meth:`bridge`), but those closed."""
        return [bridge for bridge in self._bridges if not bridge.closed]

    def session_closed(self, session: Session) -> None:
        """Package-internal: ``session`` has ended; forget it and the requests it made."""
        self._sessions.discard(session)
        self._limits.closed(session)
        self.stats.retire(session.link.transport, session.counters)
        self._inflight.forget(session)
        if self.streams.streams:
            self.streams.session_closed(session)

    def clients(self) -> list[Session]:
        """Package-internal: the sessions connected now, a snapshot. For the modules that
        look clients up (``$sys.kill.``) or report on them (``/metrics``)."""
        return list(self._sessions)

    def system_publish(
        self,
        session: Session,
        subject: str,
        data: bytes | None,
        reply: str | None,
        headers: Headers | None,
        pub: Pub | None,
    ) -> None:
        """Package-internal: a PUB on a reserved ``$sys.`` subject (or with a ``$sys.``
        reply subject) from ``session``; see :mod:`asyncipc._system`. A session hands it
        here rather than importing ``_system`` itself, so that imports point one way."""
        _system.handle(session, subject, data, reply, headers, pub)

    def stream_request(
        self,
        session: Session,
        subject: str,
        data: bytes,
        reply: str | None,
        headers: Headers | None,
    ) -> None:
        """Package-internal: a PUB on ``$sys.stream.`` from ``session`` (the streams API).
        Answered by :attr:`streams`, or sent on through the relay :meth:`forward_streams`
        named."""
        forward = self._stream_relay
        if forward is not None:
            forward.outbound(subject, data, reply, headers)
            return
        self.streams.handle(session, subject, data, reply, headers)

    def monitor_request(self, subject: str, data: bytes, reply: str) -> None:
        """Package-internal: a ``$sys.monitor.`` request from a client, answered by
        :attr:`monitor` (``docs/monitoring.md``)."""
        self.monitor.request(subject, data, reply)

    def forward_streams(self, relay: Relay | None) -> None:
        """Package-internal: send every ``$sys.stream.`` request of this broker's clients
        to ``relay`` instead of answering it here (None: answer here again). For a
        ``file://`` process while another process hosts its directory's streams."""
        self._stream_relay = relay

    def relay_stream_request(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        """Package-internal: a ``$sys.stream.`` request that came in through a relay (a
        ``file://`` process forwarded it): answered here, with no session behind it."""
        self.streams.handle(None, subject, data, reply, headers)

    def add_relay(self, relay: Relay) -> None:
        """Package-internal: hand ``relay`` every message published here on a subject it
        :meth:`~Relay.wants` (the ``file://`` log, a bridge to another broker). A request
        on such a subject gets no ``503`` when nobody here listens: the answer may come
        from the other side."""
        self._relays.append(relay)

    def remove_relay(self, relay: Relay) -> None:
        """Package-internal: stop relaying to ``relay``."""
        if relay in self._relays:
            self._relays.remove(relay)

    def relay_publish(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        """Package-internal: a message that came in through a relay, delivered to the
        subscribers here and to no relay (so that nothing echoes back out)."""
        self._relaying = True
        try:
            self.publish(subject, data, reply, headers, None, None)
        finally:
            self._relaying = False

    def interest(self, subject: str) -> bool:
        """Package-internal: whether some subscription receives ``subject``, here or,
        for all we know, beyond a relay that wants it."""
        if self.router.route(subject):
            return True
        return any(relay.wants(subject) for relay in self._relays)

    def deliver_to(
        self, inbox: str, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> bool:
        """Package-internal: deliver a message to the subscribers of ``inbox`` as if it
        were published on ``subject`` (a stream consumer's delivery to a pull request's
        reply subject, as NATS does). False if nobody took it (no subscriber, or the
        subscriber's overflow policy dropped it).

        With no subscriber here, a relay that wants ``inbox`` takes it, with ``subject``
        in the :data:`~asyncipc.protocol.system.DELIVER_SUBJECT_HEADER` header: its other
        end calls ``deliver_to`` with it (a consumer's worker in another ``file://``
        process)."""
        sent = False
        routes = self.router.route(inbox)
        if not routes and self._relays:
            relayed = {**(headers or {}), DELIVER_SUBJECT_HEADER: subject}
            for relay in self._relays:
                if relay.wants(inbox):
                    relay.outbound(inbox, data, reply, relayed)
                    sent = True
            return sent
        for route in routes:
            owner = route.owner
            link = owner.link
            if link.write_blocked and not self.apply_overflow(route, None):
                continue
            try:
                link.deliver(route.sid, subject, data, reply, headers, None)
            except (ConnectionClosed, FrameTooLarge):
                continue
            sent = True
            owner.counters.messages_out += 1
            owner.counters.bytes_out += len(data)
            self.stats.messages_out += 1
            if reply is not None and owner.access is not None:
                owner.access.request_delivered(reply)  # a stream message's ack subject
        return sent

    def reconfigure(self, options: BrokerOptions) -> None:
        """Take new options while running (``asyncipc broker --config`` on SIGHUP): the
        users and their permissions apply to connected clients at once. A client whose
        user is gone is disconnected (ERR ``AUTH``); one that lost a permission is refused
        from now on, and each subscription it may no longer have is removed with an ERR
        ``PERMISSION`` naming it. Listeners and connections are left as they are; the
        other options apply to what comes next (``docs/security.md``)."""
        self.options = options
        users = {user.name: user for user in options.users}
        for session in list(self._sessions):
            if session.user is None or session.closed:
                continue
            user = users.get(session.user.name)
            if user is None:
                session.fail(ErrorCode.AUTH, f"user {session.user.name!r} was removed")
                continue
            session.set_user(user)
            session.reapply()

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` is called (from a signal handler, another task...)."""
        if self._closed is None:
            self._closed = asyncio.Event()
        await self._closed.wait()

    async def close(self) -> None:
        """Stop listening (socket files are removed), wait until the requests in flight
        are answered, let every client receive what is already buffered for it, then
        disconnect them. Each of the two waits is bounded by ``drain_timeout``: a
        request whose reply has not come by then is given up, a client that cannot
        take its messages is aborted.

        Cancelling ``close()`` does not cut this short: what it promises still happens
        (within those bounds), then the cancellation is raised (docs/decisions.md)."""
        if self._closing:
            # A second caller waits for the first one's drain, as Bus.close() does.
            if self._closed is None:
                self._closed = asyncio.Event()
            await self._closed.wait()
            return
        self._closing = True
        await shielded(self._shut_down())

    async def _shut_down(self) -> None:
        self.monitor.close()
        for listener in self._listeners:
            await listener.aclose()
        if self._inflight:
            # Clients stay connected meanwhile: a service finishing a request publishes
            # its reply through us, and the requester must still be there to get it.
            log.info("waiting for the replies to %d requests in flight", len(self._inflight))
            with anyio.move_on_after(self.options.drain_timeout) as answered:
                await self._inflight.wait_empty()
            if answered.cancelled_caught:
                log.warning("gave up on %d unanswered requests", len(self._inflight))
        # Acknowledgements already due go out, consumer state is saved, logs are synced.
        await self.streams.close()
        # Before the clients go: what the bridges hold for NATS is sent, and what they
        # already took from NATS is delivered here.
        for bridge in self._bridges:
            await bridge.close()
        adopted = {s.link for s in self._sessions}
        for link in list(self._unadopted):
            if link not in adopted and not link.closed:
                link.close()  # a spawned child that never spoke: it sees end-of-file
        links = [s.link for s in self._sessions] + self._limits.close_refused()
        for session in list(self._sessions):
            session.close()
        # The links close side by side; waiting for each in turn under one deadline
        # takes as long as the slowest, and needs no task per link.
        with anyio.move_on_after(self.options.drain_timeout) as drained:
            for link in links:
                await link.wait_closed()
        for link in links:
            if not link.closed or drained.cancelled_caught:
                link.abort()
        for listener in self._listeners:
            # Adapters (gRPC, HTTP) stop their servers once the links they served are gone.
            await listener.wait_closed()
        if self._closed is None:
            self._closed = asyncio.Event()
        self._closed.set()
        log.info("broker closed")

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- the hot path -----------------------------------------------------------------

    def publish(
        self,
        subject: str,
        data: bytes | None,
        reply: str | None,
        headers: Headers | None,
        pub: Pub | None,
        source: Session | None,
    ) -> None:
        """Deliver a message to every route of ``subject``.

        It comes either as fields (from an in-process bus: ``pub`` is None) or as the PUB
        frame it arrived in (``data`` is None: sliced out only if an in-process target
        needs it, stream targets forward the frame's bytes). ``source`` is paused if a
        ``block`` subscriber cannot keep up.
        """
        stats = self.stats
        stats.messages_in += 1
        if data is not None:
            size = len(data)
        else:
            assert pub is not None  # one or the other: and a native read, compiled
            size = pub.size
        if source is not None:
            counters = source.counters
            counters.messages_in += 1
            counters.bytes_in += size
        # Streams and relays are two attribute checks when none is there; their work
        # lives in _observe() so that the plain path stays short. A reply to a request in
        # flight is marked answered after its delivery (InFlight.answered, below), off
        # the round trip's path: its requester is reading it meanwhile.
        relayed = False
        if self.streams.capturing or self._relays:
            relayed = self._observe(subject, data, reply, headers, pub)
        # The router's cache answers the common case (a subject seen before, no queue
        # group) without a call: a frame less per message.
        entry = self._route_cache.get(subject)
        routes = entry[0] if entry is not None and not entry[1] else self.router.route(subject)
        if not routes:
            # Not for a request that came in through a relay: its requester's own broker
            # decides about no-responders, and ours may not be the only one listening.
            if reply is not None and not relayed and not self._relaying:
                stats.no_responders += 1
                self.publish(reply, b"", None, NO_RESPONDERS_HEADERS, None, None)
            if self.awaited:
                self._inflight.answered(subject)
            return
        sent = 0
        for route in routes:
            owner = route.owner
            link = owner.link
            # A socket's link (Session.stream), the common case, apart: compiled, it is
            # read and called natively. It is never in-process nor direct.
            stream = owner.stream
            blocked = stream.write_blocked if stream is not None else link.write_blocked
            if blocked and not self.apply_overflow(route, source):
                continue
            try:
                if stream is not None:
                    stream.deliver(route.sid, subject, data, reply, headers, pub)
                elif (direct := link.direct) is not None:
                    # In-process and reading: its Bus, called without a hop.
                    if data is None:
                        data = pub.data  # type: ignore[union-attr]
                    direct.msg_received(route.sid, subject, data, reply, headers)
                else:
                    if data is None and link.in_process:
                        data = pub.data  # type: ignore[union-attr]
                    link.deliver(route.sid, subject, data, reply, headers, pub)
            except ConnectionClosed:
                continue  # its link_lost is on the way and will remove the route
            except FrameTooLarge as exc:
                owner.send_error(
                    ErrorCode.NOT_DELIVERED, f"message not delivered: {exc}", route.sid
                )
                continue
            sent += 1
            counters = owner.counters
            counters.messages_out += 1
            counters.bytes_out += size
            if reply is not None and owner.access is not None:
                owner.access.request_delivered(reply)  # it may answer (allow_responses)
        stats.messages_out += sent
        if self.awaited:
            self._inflight.answered(subject)  # if it is the reply to a request we saw
        if reply is not None and source is not None and sent:
            self._inflight.add(reply, source, headers)

    def _observe(
        self,
        subject: str,
        data: bytes | None,
        reply: str | None,
        headers: Headers | None,
        pub: Pub | None,
    ) -> bool:
        """What a publish owes besides its routes: stream capture and relays. True if a
        relay took the message."""
        if self.streams.capturing:
            self.streams.capture(
                subject,
                data if data is not None else pub.data,  # type: ignore[union-attr]
                headers,
            )
        relayed = False
        if self._relays and not self._relaying:
            for relay in self._relays:
                if relay.wants(subject):
                    relay.outbound(
                        subject,
                        data if data is not None else pub.data,  # type: ignore[union-attr]
                        reply,
                        headers,
                    )
                    relayed = True
        return relayed

    def apply_overflow(self, route: Route[Session], source: Session | None) -> bool:
        """The route's client is behind: apply its policy. True to deliver anyway.

        Package-internal (``_system`` delivers ``$sys.signal.`` loopbacks through it too),
        public so that no module reaches into the broker for it."""
        target = route.owner
        overflow = route.overflow
        if overflow is Overflow.BLOCK:
            # Even when the source is the target itself (a client publishing to its own
            # subscription): otherwise nothing would bound what we buffer for it. Its
            # reading resumes when it has taken what we hold (writing_resumed).
            if source is not None and target not in source.blocked_by:
                source.blocked_by.add(target)
                if not target.blocked_sources:
                    target.holding_publishers()  # its block_timeout starts now
                target.blocked_sources.add(source)
                source.link.pause_reading()
            return True
        if overflow is Overflow.ERROR:
            self._slow_consumer(target, route.sid, route)
            return False
        route.dropped += 1
        self.stats.dropped += 1
        target.counters.dropped += 1
        return False

    def _slow_consumer(self, target: Session, sid: int, route: Route[Session]) -> None:
        self.stats.slow_consumers += 1
        self.monitor.slow_consumer(target, route)
        target.drop_route(route)
        target.send_error(
            ErrorCode.SLOW_CONSUMER,
            f"subscription {sid} on {route.subject!r} cut off: the client fell more than "
            f"{self.options.high_water} bytes behind",
            sid,
        )
