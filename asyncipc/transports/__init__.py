"""The transport registry: URL scheme → the module that turns that channel into Links.

Adding a channel is adding one module that calls :func:`register`; nothing above it
changes. Built-in transports are imported on first use, so ``import asyncipc`` does not
pay for channels a program never touches.
"""

from __future__ import annotations

import importlib
import re
import ssl as _ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import ConfigurationError
from ..link import DEFAULT_HIGH_WATER, Accept, Link, Listener
from ..protocol import DEFAULT_MAX_FRAME

__all__ = [
    "URL",
    "EmbeddedTransport",
    "Transport",
    "TransportOptions",
    "lookup",
    "parse_url",
    "register",
    "schemes",
]


@dataclass(frozen=True)
class URL:
    """A parsed channel URL. ``query`` holds the ``?key=value`` options."""

    raw: str
    scheme: str
    host: str = ""
    port: int | None = None
    path: str = ""
    query: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """For ``memory://name`` and ``shm://name``: the part after ``//``."""
        return self.host or self.path.strip("/")


_BARE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(\?.*)?\Z", re.DOTALL)


def parse_url(url: str) -> URL:
    """Split ``url`` into scheme, host, port, path and query; raise ConfigurationError."""
    # "scheme:" alone, or with a query only ("pipe:?fds=3,4"), names a channel too.
    if not isinstance(url, str) or ("://" not in url and not _BARE.match(url)):
        raise ConfigurationError(f"not a channel URL: {url!r} (expected scheme://...)")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme:
        raise ConfigurationError(f"URL {url!r} has no scheme")
    if scheme == "nats" and "," in parts.netloc:
        # nats://h1:4222,h2:4222 names a cluster: its transport splits the servers.
        return URL(raw=url, scheme=scheme, host=parts.netloc, query=dict(parse_qsl(parts.query)))
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"URL {url!r} has an invalid port") from None
    return URL(
        raw=url,
        scheme=scheme,
        host=parts.hostname or "",
        port=port,
        path=unquote(parts.path),
        query=dict(parse_qsl(parts.query)),
    )


@dataclass(frozen=True)
class TransportOptions:
    """Settings every transport understands (a transport ignores what does not apply).

    ``ssl``: for ``tls://``, a server context when listening, a client context when
    connecting. ``high_water``: bytes a link buffers before it reports ``write_blocked``.
    ``max_frame``: the largest frame this side accepts.
    """

    ssl: _ssl.SSLContext | None = None
    high_water: int = DEFAULT_HIGH_WATER
    max_frame: int = DEFAULT_MAX_FRAME
    connect_timeout: float = 5.0
    token: str | None = None
    """The client's secret, for a transport that authenticates itself (``nats://``); the
    others carry it in the HELLO frame."""
    connect_options: Any = None
    """The whole :class:`~asyncipc.ConnectOptions`, for a transport that runs a client of
    its own and maps them onto it (``nats://``: reconnecting, pings, buffering)."""
    max_hello: int | None = None
    """Listening: the largest first frame (the HELLO) a stream link accepts, checked on
    its length prefix; ``max_frame`` applies from the second frame on. ``None``: no
    separate bound. The broker passes its ``BrokerOptions.max_hello``."""
    frame_timeout: float = 0.0
    """Listening: seconds a stream link gives a started frame to arrive whole, plus one
    second per ``frame_min_rate`` bytes of the length it announced; a peer that takes
    longer is cut off (ERR ``PEER_TIMEOUT``). 0: no deadline (the client side)."""
    frame_min_rate: int = 1024 * 1024
    """Bytes per second a large frame is given on top of ``frame_timeout``."""


class Transport(Protocol):
    """What a transport module registers for its scheme(s)."""

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        """Open a link to a listener at ``url``."""
        ...

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        """Bind ``url`` and call ``accept`` with a link for each incoming connection."""
        ...


@runtime_checkable
class EmbeddedTransport(Protocol):
    """A transport whose URLs name no broker process: :func:`asyncipc.connect` runs a
    broker for them in the calling process (``file:///dir``), as it does for ``memory://``.

    ``connect`` calls :meth:`acquire` before dialling and awaits what it returns when the
    bus closes; the transport's ``connect`` then attaches to that broker."""

    async def acquire(self, url: URL, options: TransportOptions) -> Callable[[], Awaitable[None]]:
        """Make sure this event loop has the broker ``url`` needs; return its release."""
        ...


NOBODY = " (is `asyncipc broker` running there?)"
"""Added to a connect error that means nobody listens at the URL (no socket, refused)."""

_registry: dict[str, Transport] = {}
_builtin = {
    "memory": "asyncipc.transports.memory",
    "unix": "asyncipc.transports.unix",
    "tcp": "asyncipc.transports.tcp",
    "tls": "asyncipc.transports.tcp",
    "udp": "asyncipc.transports.udp",
    "pipe": "asyncipc.transports.pipe",
    "fifo": "asyncipc.transports.fifo",
    "grpc": "asyncipc.adapters.grpc",  # an adapter: a broker listener and a client
    "http": "asyncipc.adapters.rest",  # an adapter too: the REST API and its WebSocket
    "https": "asyncipc.adapters.rest",
    "shm": "asyncipc.transports.shm",
    "mmap": "asyncipc.transports.mmap",
    "file": "asyncipc.transports.file",
    "nats": "asyncipc.adapters.nats",  # the Bus on a NATS cluster, through nats-py
}


def register(scheme: str, transport: Transport) -> None:
    """Make ``scheme://`` URLs use ``transport``. A later registration replaces an earlier."""
    _registry[scheme.lower()] = transport


def lookup(scheme: str) -> Transport:
    """The transport for ``scheme``; raises ConfigurationError naming the known ones.

    The adapters' schemes (``grpc``, ``http``, ``https``) need an extra of the install;
    without it their module's import raises the ConfigurationError that names it.
    """
    transport = _registry.get(scheme)
    if transport is None and scheme in _builtin:
        importlib.import_module(_builtin[scheme])
        transport = _registry.get(scheme)
    if transport is None:
        known = ", ".join(sorted(schemes()))
        raise ConfigurationError(f"no transport for scheme {scheme!r} (known: {known})")
    return transport


def schemes() -> set[str]:
    """Every scheme that :func:`lookup` can resolve."""
    return set(_registry) | set(_builtin)
