"""Options objects: every tunable with its default, documented once.

Frozen dataclasses instead of long keyword lists (the lesson of nats.py's 36-parameter
``connect``): ``connect(url, options=ConnectOptions(...))``, or the few common keywords.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field

from .link import DEFAULT_HIGH_WATER
from .protocol import DEFAULT_MAX_FRAME
from .users import User

__all__ = ["BrokerOptions", "ConnectOptions"]


@dataclass(frozen=True)
class ConnectOptions:
    """How a :class:`~asyncipc.Bus` connects.

    Attributes:
        name: shown in the broker's logs for this client.
        token: the shared secret the broker may require (also ``?token=`` in the URL).
        user: the user this client is on a broker with users (``docs/security.md``);
            also ``tcp://user:password@host:port``. Sent in HELLO.
        password: that user's password. Unneeded for a user the broker identifies by
            Unix peer credentials or a TLS client certificate.
        ssl: client TLS context for ``tls://`` (else built from the URL query).
        max_frame: largest frame we accept; the broker's announced maximum bounds what
            we send.
        connect_timeout: seconds for the connection and the handshake together.
        ping_interval: seconds of silence before we ping the broker; a broker silent for
            ``dead_peer_factor`` intervals is declared dead. 0 disables.
        drain_timeout: seconds ``close()`` waits for callbacks and flushes to finish.
        high_water: bytes buffered towards the broker before ``publish`` waits.
        allow_signals: signals other local clients may ask the broker to send this
            process (names such as ``"HUP"``, or ``signal.SIGHUP``); sent in HELLO as
            ``signals``. Empty (the default): none. See ``docs/signals.md``.
        reconnect: when the link to a broker process drops, connect again (to the same
            URL first, then the others of the list in turn) and restore every
            subscription. Off: the bus ends with the link (``BrokenLinkError``).
            ``memory://`` and ``pipe:`` never reconnect: there is nothing to redial.
        reconnect_delay: seconds before the second attempt (the first is at once); each
            further wait doubles, up to ``reconnect_max_delay``, each one jittered down
            to half so that many clients do not redial in step.
        reconnect_max_delay: the longest wait between two attempts. Short by default,
            because a local broker restarts in milliseconds and clients should resume
            within half a second of it.
        max_reconnect_attempts: give up after this many attempts in a row (``None``:
            never).
        reconnect_time_limit: give up after this many seconds without a link (``None``:
            never).
        reconnect_buffer: bytes of publishes held while disconnected; past it,
            ``publish`` waits for the reconnect (and raises ``Disconnected`` if it gives
            up). What is held is lost if the bus closes before reconnecting.
        tracing: OpenTelemetry spans and ``traceparent`` headers (``docs/guide.md``,
            Tracing). ``None``: on when ``opentelemetry-api`` is installed and a tracer
            provider is set when the bus connects. ``True``/``False``: on/off. A tracer
            provider: on, through it.
    """

    name: str = ""
    token: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: ssl.SSLContext | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    connect_timeout: float = 5.0
    ping_interval: float = 20.0
    dead_peer_factor: float = 3.0
    drain_timeout: float = 10.0
    high_water: int = DEFAULT_HIGH_WATER
    allow_signals: tuple[str | int, ...] = ()
    reconnect: bool = True
    reconnect_delay: float = 0.01
    reconnect_max_delay: float = 0.25
    max_reconnect_attempts: int | None = None
    reconnect_time_limit: float | None = None
    reconnect_buffer: int = 8 * 1024 * 1024
    tracing: object = None


@dataclass(frozen=True)
class BrokerOptions:
    """How a :class:`~asyncipc.Broker` treats its clients.

    Attributes:
        token: if set, every client must present it in its HELLO.
        max_frame: largest frame accepted from clients, announced in WELCOME.
        handshake_timeout: seconds a new connection has to send HELLO.
        ping_interval: seconds of silence before the broker pings a client; a client
            silent for ``dead_peer_factor`` intervals is disconnected. 0 disables.
        high_water: bytes the broker buffers for one client before that client counts as
            slow and its subscriptions' overflow policies apply.
        drain_timeout: seconds ``close()`` gives clients to receive what is buffered,
            and before that to answer the requests they hold.
        ssl: server TLS context for ``tls://`` listeners (else from the URL query).
        remote_signals: let clients the broker cannot identify as local processes
            (TCP, TLS: no peer credentials) ask it to signal other clients. Off by
            default: a network listener must not become a way to kill local processes.
        store: a directory (a ``str`` or a path) where streams keep their records
            (``docs/streams.md``); created if missing. ``None``: streams live in memory
            and say so.
            See ``docs/signals.md``.

    Limits, so that no client can exhaust the broker (``docs/guide.md``, Limits). Each
    refusal is an ERR frame naming the limit, then a close, and one log line:

        max_hello: the largest HELLO (the first frame) in bytes, checked on its length
            prefix before any of its body is buffered: before the handshake a peer
            holds at most this much of the broker's memory.
        max_pending_handshakes: connections that have not completed their handshake,
            all listeners together; beyond it a new connection is refused at once
            (ERR ``LIMIT``). With ``max_hello`` it bounds what peers without the token
            can make the broker hold, to about ``max_pending_handshakes * max_hello``.
        frame_timeout: seconds a started frame has, from its first byte, to arrive
            whole, plus one second per ``frame_min_rate`` bytes of the length it
            announced (a frame that stalls half-way is cut off, ERR ``PEER_TIMEOUT``,
            and its buffer freed). 0 disables.
        frame_min_rate: bytes per second a large frame is given on top of
            ``frame_timeout`` (8 MiB: 8 s more by default).
        max_connections: clients connected at once over the listeners (in-process
            buses, such as the adapters', are not counted); beyond it a new
            connection is refused (ERR ``LIMIT``).
        max_connections_per_peer: connections at once from one remote IP address
            (tcp, tls) or one Unix user (a uid from peer credentials: unix, fifo).
            Channels that tell neither are counted only in ``max_connections``.
        max_failed_handshakes: connections from one remote IP address (tcp, tls) that
            may end without completing their handshake (a bad token, garbage, an
            oversized HELLO, a time-out, a refusal over a limit) in quick succession
            before that address is refused at once (ERR ``LIMIT``), without a session;
            the refused connection is then held unread for 2 s (64 at most, with the
            other refusals kept), so that a reconnect loop waits instead of spinning.
            Counted in a bucket that drains this many per 4 seconds and holds at most
            twice as many: a peer that keeps failing gets at most this many full
            handshakes per 4 s, and one that stops is served again within 4 s. Unix
            users are never refused this way (a uid is accountable, and its healthy
            services share it). 0 disables. Without it, a reconnect loop that fails
            thousands of handshakes a second costs the broker a session each
            (``docs/security.md``, "What an attacker costs").
        max_subscriptions: subscriptions one connection may hold; a SUB beyond it is
            refused (ERR ``TOO_MANY_SUBSCRIPTIONS``) and the connection stays.
        users: the :class:`~asyncipc.users.User` s clients connect as, each with its
            permissions (``docs/security.md``). Empty: no users; every client may do
            everything (once it has the token, if there is one). With users, a client
            must be one of them, or present the token (which may do everything).
        block_timeout: seconds a subscriber with ``overflow="block"`` may hold its
            publishers back without catching up (its buffer at the broker never falls
            back below half the high-water mark meanwhile); then its ``block``
            subscriptions are cut off as slow consumers (ERR 101 naming each, counted
            in ``stats.slow_consumers``) and the publishers resume. NATS cuts slow
            consumers too; without it one stalled reader stops every publisher on its
            subject until the keep-alive gives up on it. 0 disables.
        subscription_max_pending: the most messages a subscription the broker keeps on
            a remote caller's behalf may queue: an adapter's Server-Sent Events stream,
            JSON WebSocket subscription or gRPC ``Subscribe``. The caller's
            ``max_pending`` is lowered to it; its ``max_bytes`` is lowered to
            ``high_water`` (:meth:`subscription_bounds`). A caller that never reads then
            pins at most that much, not whatever it asked for.
    """

    token: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    handshake_timeout: float = 5.0
    ping_interval: float = 20.0
    dead_peer_factor: float = 3.0
    high_water: int = 4 * DEFAULT_HIGH_WATER
    drain_timeout: float = 5.0
    ssl: ssl.SSLContext | None = None
    remote_signals: bool = False
    store: str | os.PathLike[str] | None = None
    max_hello: int = 64 * 1024
    max_pending_handshakes: int = 256
    frame_timeout: float = 10.0
    frame_min_rate: int = 1024 * 1024
    max_connections: int = 10_000
    max_connections_per_peer: int = 1_000
    max_failed_handshakes: int = 32
    max_subscriptions: int = 100_000
    # --- users and permissions (issue 13, docs/security.md) ---
    users: tuple[User, ...] = ()
    block_timeout: float = 5.0
    subscription_max_pending: int = 8192

    def subscription_bounds(self, max_pending: int, max_bytes: int) -> tuple[int, int]:
        """The bounds in effect for a subscription a remote caller asked for with
        ``max_pending`` and ``max_bytes`` (adapters' SSE, JSON WebSocket, gRPC
        ``Subscribe``): each capped by the broker's limit, never raised."""
        return (
            max(1, min(max_pending, self.subscription_max_pending)),
            max(1, min(max_bytes, self.high_water)),
        )
