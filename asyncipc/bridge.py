"""A broker's bridge to a NATS cluster: chosen subjects flow both ways, each message once.

:class:`Bridge` is a :class:`~asyncipc.broker.Relay` of its broker (``Broker.bridge``, or
``asyncipc broker --bridge nats://... --bridge-subjects 'orders.>,pricing.>'``). It holds
one nats-py connection and depends on the broker only through the relay hooks
(``add_relay``, ``relay_publish``) and its router (to know whether a request has a local
responder). ``docs/bridge.md`` explains what crosses and why nothing crosses twice; in short:

- **Local → NATS**: the broker hands the bridge (``outbound``) every message published
  here on a bridged subject; it is queued (bounded: past ``max_pending`` bytes it is
  dropped and counted, ``outbound`` never blocks the broker) and one writer task publishes
  the queue to NATS in order.
- **NATS → local**: one NATS subscription per bridged pattern; what arrives is delivered
  with ``relay_publish``, which hands it to local subscribers and to no relay, so it never
  goes back out. The connection is made with ``no_echo``: NATS does not hand the bridge
  what the bridge itself published. A subject two overlapping patterns match arrives on
  both subscriptions; only the first pattern's subscription delivers it.
- **Requests, local → NATS**: the reply subject is replaced by one under the bridge's own
  NATS inbox (``_INBOX.<bridge id>.<n>``), mapped back to the local reply subject until the
  requester's time-out (``asyncipc-timeout``) or ``reply_timeout``; each reply that comes
  back is delivered to the local reply subject. NATS's no-responders status (503) becomes
  asyncipc's ``asyncipc-status: 503`` when nobody here listens either.
- **Requests, NATS → local**: the requester's NATS reply subject is kept as is; the
  bridge :meth:`wants` it (until the time-out) so that a local responder's answer goes
  back out to NATS.
- **Reconnect**: nats-py reconnects on its own (``max_reconnect_attempts=-1``) and
  subscribes again; :class:`BridgeStats` and the ``asyncipc.bridge`` log say what
  happened.

nats-py is an optional dependency (``pip install 'asyncipc[nats]'``): it is imported when
a bridge starts, never when this module is.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .adapters import _natspy as natspy
from .errors import ClosedError, ConfigurationError
from .protocol import Headers, parse_timeout
from .protocol.system import (
    NO_RESPONDERS_STATUS,
    RESERVED_PREFIX,
    STATUS_HEADER,
    TIMEOUT_HEADER,
)
from .router import Router
from .subjects import SubjectIndex, validate_pattern

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS
    from nats.aio.msg import Msg

__all__ = ["Bridge", "BridgeStats", "require_nats"]

log = logging.getLogger("asyncipc.bridge")

INBOX = "_INBOX."
"""Reply subjects: never bridged by pattern, only as the replies of requests that crossed."""
MAX_PENDING = 8 << 20
"""Payload bytes queued for NATS at most (default of ``max_pending``)."""
BACKLOG = 1 << 20
"""Bytes the broker may hold for slow local subscribers before the bridge stops taking
messages from NATS (default of ``backlog``)."""
REPLY_TIMEOUT = 60.0
"""Seconds a request's reply subject stays mapped when the request says no time-out."""
MAX_REPLIES = 100_000
"""Reply subjects tracked at most, each way; past it the oldest is forgotten."""
SUB_PENDING_MSGS = 65_536
SUB_PENDING_BYTES = 64 << 20
"""What nats-py holds per bridged subscription while the local side is behind; past it
nats-py drops (a slow consumer, counted in ``dropped_in``)."""
BACKLOG_POLL = 0.005
ERROR_EVERY = 5.0
"""Seconds between two warnings about NATS errors (the others are logged at debug)."""
WANTS_CACHE = 4096


class BridgedBroker(Protocol):
    """What the bridge needs of its broker (:class:`asyncipc.Broker` is one)."""

    @property
    def router(self) -> Router[Any]: ...

    @property
    def buffered(self) -> int: ...

    def add_relay(self, relay: Any) -> None: ...

    def remove_relay(self, relay: Any) -> None: ...

    def relay_publish(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None: ...


@dataclass
class BridgeStats:
    """What a bridge has done since it started (``bridge.stats``)."""

    connected: bool = False
    """Whether the NATS connection is up now."""
    server: str | None = None
    """The NATS server it is (or was last) connected to."""
    connects: int = 0
    """Connections made: the first one, then one per reconnect."""
    disconnects: int = 0
    messages_out: int = 0
    """Messages published to NATS (requests and replies included)."""
    bytes_out: int = 0
    messages_in: int = 0
    """Messages from NATS delivered here (replies included)."""
    bytes_in: int = 0
    requests_out: int = 0
    """Local requests sent to NATS."""
    requests_in: int = 0
    """NATS requests delivered here."""
    no_responders: int = 0
    """Local requests answered 503 because nobody, here or on NATS, listens."""
    late_replies: int = 0
    """Replies from NATS to a request whose time-out had passed: not delivered."""
    dropped_out: int = 0
    """Messages for NATS not sent: the queue was full (NATS slower than the local
    publishers, or unreachable for long), or NATS refused them."""
    dropped_in: int = 0
    """Messages NATS sent that were lost: nats-py's per-subscription buffer was full
    because the local side did not keep up (a slow consumer)."""
    paused: int = 0
    """Times the bridge stopped taking messages from NATS because local subscribers were
    behind (more than ``backlog`` bytes buffered in the broker)."""
    queued: int = 0
    """Messages waiting for NATS now."""
    queued_bytes: int = 0


_Out = tuple[str, bytes, str, "dict[str, str] | None"]


class Bridge:
    """One broker's bridge to NATS. See the module docstring; made by ``Broker.bridge``.

    ``servers``: ``nats://h1:4222,h2:4222`` or a list of URLs. ``subjects``: the bridged
    patterns. ``max_pending``: bytes queued for NATS before new messages are dropped.
    ``backlog``: bytes the broker may hold for slow local subscribers before the bridge
    stops taking messages from NATS. ``max_pending_in``: bytes nats-py then holds per
    bridged subscription before it drops (a slow consumer). ``reply_timeout``: how long
    a request's reply subject stays mapped when the request carries no time-out.
    ``nats_options`` go to ``nats.connect`` (``user``, ``password``, ``token``, ``tls``,
    ``user_credentials``...).
    """

    def __init__(
        self,
        broker: BridgedBroker,
        servers: str | Sequence[str],
        subjects: Sequence[str],
        *,
        max_pending: int = MAX_PENDING,
        backlog: int = BACKLOG,
        max_pending_in: int = SUB_PENDING_BYTES,
        reply_timeout: float = REPLY_TIMEOUT,
        drain_timeout: float = 5.0,
        nats_options: dict[str, Any] | None = None,
    ) -> None:
        self.broker = broker
        self.servers = _servers(servers)
        patterns: list[str] = []
        for pattern in subjects:
            pattern = pattern.strip()
            validate_pattern(pattern)
            if pattern.startswith(RESERVED_PREFIX):
                raise ConfigurationError(f"cannot bridge {pattern!r}: $sys. never crosses")
            if pattern not in patterns:
                patterns.append(pattern)
        if not patterns:
            raise ConfigurationError("a bridge needs at least one subject pattern")
        self.subjects = patterns
        self.max_pending = max_pending
        self.backlog = backlog
        self.max_pending_in = max_pending_in
        self.reply_timeout = reply_timeout
        self.drain_timeout = drain_timeout
        self.nats_options = dict(nats_options or {})
        self.stats = BridgeStats()
        self.inbox = f"{INBOX}{os.urandom(11).hex()}"
        """The bridge's own NATS reply prefix: local requests go out with replies under it."""
        self._index: SubjectIndex[int] = SubjectIndex()
        for i, pattern in enumerate(patterns):
            self._index.add(pattern, i)
        self._wants: dict[str, bool] = {}
        # Local requests that went out: token -> (local reply subject, local responders?).
        self._out_replies: dict[str, tuple[str, bool]] = {}
        self._out_expiry: list[tuple[float, str]] = []
        self._next_token = 0
        # NATS requests that came in: their NATS reply subjects (expiring by _in_expiry).
        self._in_replies: dict[str, None] = {}
        self._in_expiry: list[tuple[float, str]] = []
        self._queue: deque[_Out] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._up = asyncio.Event()
        self._nc: NATS | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._closed = asyncio.Event()
        self._warned = 0.0
        self._error_said = -ERROR_EVERY
        self._next_look = 0.0

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, wait: float | None = 5.0) -> None:
        """Become the broker's relay and connect. Returns once connected with the bridge's
        interest registered on NATS, or after ``wait`` seconds (None: at once): the bridge
        then keeps trying in the background (see :attr:`connected`). Messages for NATS
        queue meanwhile, up to ``max_pending``. Raises
        :class:`~asyncipc.ConfigurationError` if nats-py is not installed."""
        if self._closing:
            raise ClosedError("bridge is closed")
        nats = require_nats()
        self._nc = nats.NATS()
        self.broker.add_relay(self)
        self._tasks.append(asyncio.create_task(self._run(), name="asyncipc-bridge"))
        if wait is None or wait <= 0:
            return
        try:
            await asyncio.wait_for(self._up.wait(), wait)
        except TimeoutError:
            log.warning(
                "bridge: no NATS server answered at %s within %g s; still trying",
                ",".join(self.servers),
                wait,
            )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closing

    @property
    def connected(self) -> bool:
        """Whether the NATS connection is up now."""
        return self.stats.connected

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once the bridge is connected (and subscribed) to NATS."""
        async with asyncio.timeout(timeout):
            while not self.stats.connected:
                await self._up.wait()

    async def _run(self) -> None:
        nc = self._nc
        assert nc is not None
        options: dict[str, Any] = {
            "name": "asyncipc-bridge",
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 2,
            **self.nats_options,
            "no_echo": True,  # what the bridge publishes must not come back to it
            "servers": self.servers,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
        }
        try:
            await nc.connect(**options)  # retries until a server answers
            for i, pattern in enumerate(self.subjects):
                await nc.subscribe(
                    pattern,
                    cb=self._inbound_for(i),
                    pending_msgs_limit=SUB_PENDING_MSGS,
                    pending_bytes_limit=self.max_pending_in,
                )
            await nc.subscribe(
                self.inbox + ".*",
                cb=self._on_reply,
                pending_msgs_limit=SUB_PENDING_MSGS,
                pending_bytes_limit=self.max_pending_in,
            )
            await natspy.flush(nc)  # the SUBs reach the server before start() returns
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bad option, refused credentials: nothing will cross
            log.error("bridge: cannot connect to %s: %s", ",".join(self.servers), exc)
            return
        self._connected(nc)
        self._tasks.append(asyncio.create_task(self._write(), name="asyncipc-bridge-writer"))
        self._tasks.append(asyncio.create_task(self._expire(), name="asyncipc-bridge-expiry"))

    def _connected(self, nc: NATS) -> None:
        stats = self.stats
        stats.connected = True
        stats.connects += 1
        stats.server = nc.connected_url.geturl() if nc.connected_url else None
        log.info(
            "bridge: connected to %s (subjects %s)%s",
            stats.server,
            ", ".join(self.subjects),
            "" if stats.connects == 1 else f", reconnect {stats.connects - 1}",
        )
        self._up.set()
        self._wake.set()

    async def _on_disconnected(self) -> None:
        if self.stats.connected:
            self.stats.connected = False
            self.stats.disconnects += 1
            self._up.clear()
            if not self._closing:
                log.warning(
                    "bridge: lost NATS server %s; reconnecting (%d messages queued)",
                    self.stats.server,
                    len(self._queue),
                )

    async def _on_reconnected(self) -> None:
        # nats-py has subscribed again and sent what it buffered before calling this.
        assert self._nc is not None
        self._connected(self._nc)

    async def _on_error(self, exc: Exception) -> None:
        from nats.errors import SlowConsumerError

        if isinstance(exc, SlowConsumerError):
            self.stats.dropped_in += 1
            self._warn(
                "a message from NATS on %s was dropped: the local side is behind", exc.subject
            )
            return
        if self._closing:
            return
        # Refused connections while a server restarts, refused credentials, a server's
        # -ERR: said, but at most every few seconds (nats-py retries twice a second).
        now = time.monotonic()
        if now - self._error_said >= ERROR_EVERY:
            self._error_said = now
            log.warning("bridge: NATS at %s: %r", ",".join(self.servers), exc)
        else:
            log.debug("bridge: NATS: %r", exc)

    async def _on_closed(self) -> None:
        if not self._closing:
            # Only with a finite max_reconnect_attempts in nats_options.
            self.stats.connected = False
            self._up.clear()
            log.error("bridge: nats-py gave up reconnecting; nothing crosses any more")

    async def close(self) -> None:
        """Stop relaying: what is queued for NATS is sent (bounded by ``drain_timeout``),
        messages already received from NATS are delivered, then the connection closes."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.broker.remove_relay(self)
        nc = self._nc
        try:
            if nc is not None and self.stats.connected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.drain_timeout):
                        while self._queue or not self._idle.is_set():
                            self._wake.set()
                            await asyncio.sleep(0.001)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if nc is not None and not nc.is_closed:
                try:
                    async with asyncio.timeout(self.drain_timeout):
                        if nc.is_connected:
                            await nc.drain()
                        else:
                            await nc.close()
                except Exception:
                    await nc.close()
        finally:
            self.stats.connected = False
            dropped = len(self._queue)
            if dropped:
                self.stats.dropped_out += dropped
                log.warning("bridge: closed with %d messages not sent to NATS", dropped)
            self._queue.clear()
            self.stats.queued = self.stats.queued_bytes = 0
            self._closed.set()
            log.info("bridge: closed")

    # --- the broker's side (Relay) -----------------------------------------------------

    def wants(self, subject: str) -> bool:
        """A subject of the bridged patterns (never ``$sys.``, never an inbox), or the
        NATS reply subject of a request that came in from NATS."""
        if subject in self._in_replies:
            return True
        if subject.startswith(INBOX):
            return False
        known = self._wants.get(subject)
        if known is None:
            known = not subject.startswith(RESERVED_PREFIX) and bool(self._index.match(subject))
            if len(self._wants) >= WANTS_CACHE:
                self._wants.clear()
            self._wants[subject] = known
        return known

    def outbound(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        """Queue a message published here for NATS; never blocks."""
        if self._closing:
            return
        stats = self.stats
        size = len(data)
        if stats.queued_bytes + size > self.max_pending and self._queue:
            stats.dropped_out += 1
            self._warn("a message on %s was not sent to NATS: the queue is full", subject)
            return
        nats_reply = ""
        if reply is not None and not reply.startswith(RESERVED_PREFIX):
            # A local request: its answer comes back to our inbox, then to ``reply``.
            self._next_token += 1
            token = f"{self._next_token:x}"
            local = bool(self.broker.router.route(subject))
            self._out_replies[token] = (reply, local)
            self._track(self._out_expiry, token, headers, self._out_replies)
            nats_reply = f"{self.inbox}.{token}"
            stats.requests_out += 1
        self._queue.append((subject, data, nats_reply, dict(headers) if headers else None))
        stats.queued += 1
        stats.queued_bytes += size
        self._wake.set()

    # --- local -> NATS -----------------------------------------------------------------

    async def _write(self) -> None:
        """Publish the queue to NATS, in order, until cancelled."""
        from nats.errors import (
            BadHeaderError,
            BadSubjectError,
            MaxPayloadError,
            OutboundBufferLimitError,
        )

        nc = self._nc
        assert nc is not None
        queue = self._queue
        stats = self.stats
        while True:
            if not queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._idle.clear()
            sent = 0
            while queue and sent < 1024:
                subject, data, reply, headers = queue[0]
                try:
                    await nc.publish(subject, data, reply, headers)
                except OutboundBufferLimitError:
                    # Disconnected and nats-py's reconnect buffer is full: hold the rest
                    # in our queue (bounded by max_pending) until the connection is back.
                    await self._until_up()
                    continue
                except (BadSubjectError, BadHeaderError, MaxPayloadError) as exc:
                    stats.dropped_out += 1
                    log.error("bridge: NATS refused a message on %s: %r", subject, exc)
                except Exception as exc:  # closed under us: close() is on its way
                    log.debug("bridge: publish failed: %r", exc)
                    await self._until_up()
                    continue
                else:
                    stats.messages_out += 1
                    stats.bytes_out += len(data)
                queue.popleft()
                stats.queued -= 1
                stats.queued_bytes -= len(data)
                sent += 1
            await asyncio.sleep(0)  # let the broker run between two batches

    async def _until_up(self) -> None:
        await asyncio.sleep(0.05)  # nats-py may not have called disconnected_cb yet
        await self._up.wait()

    # --- NATS -> local -----------------------------------------------------------------

    def _inbound_for(self, position: int) -> Any:
        index = self._index

        async def inbound(msg: Msg) -> None:
            subject = msg.subject
            if subject.startswith((INBOX, RESERVED_PREFIX)):
                return  # replies cross only as replies; $sys. never
            if position and min(index.match(subject)) < position:
                return  # an earlier pattern's subscription delivers it
            reply = msg.reply or None
            if reply is not None and reply.startswith(RESERVED_PREFIX):
                # A local responder's answer would be a request to this broker itself.
                reply = None
            await self._deliver(subject, msg.data, reply, _headers(msg))

        return inbound

    async def _deliver(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        broker = self.broker
        now = asyncio.get_running_loop().time()
        if now >= self._next_look:
            self._next_look = now + 0.001
            if broker.buffered > self.backlog:
                # Local subscribers are behind: leave the messages with nats-py (bounded
                # by its pending limits, then dropped and counted) until they catch up.
                self.stats.paused += 1
                await self._local_caught_up()
        stats = self.stats
        if reply is not None:
            stats.requests_in += 1
            self._in_replies[reply] = None
            self._track(self._in_expiry, reply, headers, self._in_replies)
        stats.messages_in += 1
        stats.bytes_in += len(data)
        try:
            broker.relay_publish(subject, data, reply, headers)
        except Exception:
            log.exception("bridge: a message on %r could not be delivered", subject)

    async def _local_caught_up(self) -> None:
        broker = self.broker
        while True:
            await asyncio.sleep(BACKLOG_POLL)
            if broker.buffered <= self.backlog or self._closing:
                return

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self.inbox) + 1 :]
        entry = self._out_replies.get(token)
        if entry is None:
            self.stats.late_replies += 1
            return
        local_reply, local = entry
        headers = _headers(msg)
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS_STATUS and not msg.data:
            if local:
                return  # nobody on NATS, but a responder here answers
            self.stats.no_responders += 1
            headers = {STATUS_HEADER: NO_RESPONDERS_STATUS}
        await self._deliver(local_reply, msg.data, msg.reply or None, headers)

    # --- reply subjects in flight ----------------------------------------------------

    def _track(
        self,
        expiry: list[tuple[float, str]],
        key: str,
        headers: Headers | None,
        table: dict[str, Any],
    ) -> None:
        seconds = self.reply_timeout
        text = headers.get(TIMEOUT_HEADER) if headers else None
        if text is not None:
            asked = parse_timeout(text)
            if asked is not None and asked < 1e9:
                seconds = asked + 1.0  # a reply on its way at the deadline still arrives
        heapq.heappush(expiry, (time.monotonic() + seconds, key))
        while len(table) > MAX_REPLIES and expiry:
            table.pop(heapq.heappop(expiry)[1], None)

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for expiry, table in (
                (self._out_expiry, self._out_replies),
                (self._in_expiry, self._in_replies),
            ):
                while expiry and expiry[0][0] <= now:
                    table.pop(heapq.heappop(expiry)[1], None)

    def _warn(self, text: str, subject: str) -> None:
        now = time.monotonic()
        if now - self._warned >= 1.0:
            self._warned = now
            log.warning(
                "bridge: " + text + " (%d out, %d in dropped so far)",
                subject,
                self.stats.dropped_out,
                self.stats.dropped_in,
            )


def _headers(msg: Msg) -> Headers | None:
    raw = msg.headers
    if not raw:
        return None
    out = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}
    out.pop("Status", None)
    out.pop("Description", None)
    return out or None


def _servers(servers: str | Sequence[str]) -> list[str]:
    if isinstance(servers, str):
        servers = servers.split(",")
    out: list[str] = []
    for server in servers:
        server = server.strip()
        if not server:
            continue
        if "://" not in server:
            server = "nats://" + server  # nats://h1:4222,h2:4222: the second one bare
        if not server.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ConfigurationError(f"cannot bridge to {server!r}: not a nats:// URL")
        out.append(server)
    if not out:
        raise ConfigurationError("a bridge needs a NATS server URL")
    return out


def require_nats() -> Any:
    """The ``nats`` package, or :class:`~asyncipc.ConfigurationError` naming the extra
    (``asyncipc[nats]``) that brings it."""
    try:
        import nats
    except ModuleNotFoundError as exc:
        from .adapters import missing_extra

        raise missing_extra("the bridge to NATS", "NATS bridge", "nats", exc) from exc
    return nats
