"""Options objects: every tunable with its default, documented once.

Frozen dataclasses instead of long keyword lists (the lesson of nats.py's 36-parameter
``connect``): ``connect(url, options=ConnectOptions(...))``, or the few common keywords.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from .link import DEFAULT_HIGH_WATER
from .protocol import DEFAULT_MAX_FRAME

__all__ = ["BrokerOptions", "ConnectOptions"]


@dataclass(frozen=True)
class ConnectOptions:
    """How a :class:`~asyncipc.Bus` connects.

    Attributes:
        name: shown in the broker's logs for this client.
        token: the shared secret the broker may require (also ``?token=`` in the URL).
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
    """

    name: str = ""
    token: str | None = None
    ssl: ssl.SSLContext | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    connect_timeout: float = 5.0
    ping_interval: float = 20.0
    dead_peer_factor: float = 3.0
    drain_timeout: float = 10.0
    high_water: int = DEFAULT_HIGH_WATER
    allow_signals: tuple[str | int, ...] = ()


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
            See ``docs/signals.md``.
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
