"""``asyncipc.connect``: URL in, handshaken :class:`~asyncipc.Bus` out.

With no URL the bus follows ``$ASYNCIPC_URL`` when it is set, as the ``asyncipc`` command
does: services started in separate processes with the same environment meet on one
broker, instead of each silently talking to an embedded broker of its own. Without it (or
with ``memory://``) the bus talks to an *embedded* broker in the running event loop,
created on first use and closed when its last bus closes, so an application needs no
separate process to start and moves to a broker process by changing only the URL (or the
environment).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as _ssl
import weakref
from collections.abc import Generator, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

from ._dialer import NOT_REDIALLED, Dialer
from .broker import Broker
from .client import Bus
from .errors import AuthenticationError, ConfigurationError, ConnectError, HandshakeError
from .options import ConnectOptions
from .transports import URL, EmbeddedTransport, TransportOptions, lookup, parse_url
from .transports.memory import has_listener

__all__ = ["DEFAULT_URL_ENV", "TOKEN_ENV", "Connector", "connect", "default_socket_url"]

log = logging.getLogger("asyncipc.client")

DEFAULT_URL_ENV = "ASYNCIPC_URL"
"""The broker a client uses when it is given no URL (``connect()``, the CLI)."""
TOKEN_ENV = "ASYNCIPC_TOKEN"
"""The shared secret that goes with ``$ASYNCIPC_URL`` (and the CLI's default token)."""

# Per loop: memory name -> [broker, number of buses using it]
_embedded: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, list[Any]]] = (
    weakref.WeakKeyDictionary()
)


def default_socket_url() -> str:
    """Where the CLI looks for a broker when neither ``--url`` nor ``$ASYNCIPC_URL`` says:
    ``$XDG_RUNTIME_DIR/asyncipc.sock`` (private to the user) or ``/tmp/asyncipc-$UID.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return f"unix://{runtime}/asyncipc.sock"
    return f"unix:///tmp/asyncipc-{os.getuid()}.sock"


async def _acquire_embedded(name: str) -> Any:
    loop = asyncio.get_running_loop()
    brokers = _embedded.setdefault(loop, {})
    entry = brokers.get(name)
    if entry is None:
        broker = Broker()
        await broker.listen(f"memory://{name}")
        entry = brokers[name] = [broker, 0]
    entry[1] += 1

    async def release() -> None:
        entry[1] -= 1
        if entry[1] == 0 and brokers.get(name) is entry:
            del brokers[name]
            await entry[0].close()

    return release


_CREDENTIAL_SCHEMES = ("tcp", "tls")


def _take_credentials(urls: list[str], options: ConnectOptions) -> tuple[list[str], ConnectOptions]:
    """``tcp://user:password@host:port``: the user and password go to the options (unless
    set there) and out of the URL, which the bus shows in its logs and events."""
    out = []
    for raw in urls:
        parts = urlsplit(raw) if isinstance(raw, str) and "@" in raw else None
        if parts is None or parts.scheme.lower() not in _CREDENTIAL_SCHEMES or not parts.username:
            out.append(raw)
            continue
        if options.user is None:
            options = replace(
                options,
                user=unquote(parts.username),
                password=None if parts.password is None else unquote(parts.password),
            )
        host = parts.netloc.rpartition("@")[2]
        out.append(urlunsplit(parts._replace(netloc=host)))
    return out, options


async def _connect(url: str | Sequence[str] | None, options: ConnectOptions) -> Bus:
    # Read when connecting, not at import: a test or a launcher may set it late.
    env_url = None if url else os.environ.get(DEFAULT_URL_ENV) or None
    urls = [url] if isinstance(url, str) else list(url or []) or [env_url or "memory://"]
    urls, options = _take_credentials(urls, options)
    try:
        parsed = [parse_url(u) for u in urls]
        for p in parsed:
            lookup(p.scheme)  # an unknown scheme fails here, before anything is dialled
    except ConfigurationError as exc:
        if env_url is None:
            raise
        raise ConfigurationError(f"${DEFAULT_URL_ENV}: {exc}") from None
    if len(parsed) > 1 and any(p.scheme == "nats" for p in parsed):
        # A list of NATS servers is one nats-py client's list (it fails over itself).
        urls = [_join_nats(urls, parsed)]
        parsed = [parse_url(urls[0])]
    if len(parsed) > 1 and any(p.scheme in NOT_REDIALLED for p in parsed):
        raise ConfigurationError(
            f"{', '.join(sorted(NOT_REDIALLED))} URLs cannot be part of a list of brokers: {urls!r}"
        )
    tokens = [p.query["token"] for p in parsed if "token" in p.query]
    if tokens and options.token is None:
        options = replace(options, token=tokens[0])
    if env_url is not None:
        log.debug("connecting to %s, from $%s", env_url, DEFAULT_URL_ENV)
        env_token = os.environ.get(TOKEN_ENV)
        if env_token and options.token is None:
            # The environment names a broker and its secret together. Sent only to the
            # broker it names: an explicit URL never picks up a secret from elsewhere.
            options = replace(options, token=env_token)
    release = None
    first = parsed[0]
    topts = TransportOptions(
        ssl=options.ssl,
        high_water=options.high_water,
        max_frame=options.max_frame,
        connect_timeout=options.connect_timeout,
        token=options.token,
        connect_options=options,
    )
    if first.scheme == "memory" and not has_listener(first.name):
        release = await _acquire_embedded(first.name)
    else:
        transport = lookup(first.scheme)
        if isinstance(transport, EmbeddedTransport):  # file:///dir: a broker of our own
            release = await transport.acquire(first, topts)
    dialer = Dialer(urls, topts)
    try:
        bus = await _first_link(dialer, options)
    except ConnectError as exc:
        if release is not None:
            await release()
        if env_url is None:
            raise
        # The caller wrote no URL: say where this one came from.
        raise ConnectError(f"{exc} (the URL came from ${DEFAULT_URL_ENV})") from None
    except BaseException:
        if release is not None:
            await release()
        raise
    if release is not None:
        bus._on_close.append(release)
    return bus


def _join_nats(urls: list[str], parsed: list[URL]) -> str:
    """``["nats://h1:4222", "nats://h2:4222"]`` as the one URL ``nats://h1:4222,h2:4222``
    (the query options of all of them together): NATS servers cannot share a list with
    asyncipc brokers, they are one cluster that nats-py fails over within."""
    if any(p.scheme != "nats" for p in parsed):
        raise ConfigurationError(f"nats:// URLs cannot share a list with other schemes: {urls!r}")
    netlocs = [urlsplit(u).netloc for u in urls]
    query: dict[str, str] = {}
    for p in parsed:
        query.update(p.query)
    tail = f"?{urlencode(query)}" if query else ""
    return "nats://" + ",".join(netlocs) + tail


async def _first_link(dialer: Dialer, options: ConnectOptions) -> Bus:
    """The URLs in order, once each: the first broker that welcomes us. Reconnecting
    (``ConnectOptions.reconnect``) is for a link that was up; a broker that is not there
    at start is the caller's to handle, as with nats-py."""
    redial = dialer if dialer.redials else None
    failures: list[str] = []
    for _ in dialer.urls:
        try:
            link, url = await dialer.dial()
        except ConnectError as exc:
            failures.append(str(exc))
            continue
        try:
            return await Bus.open(link, options, url, redial)
        except AuthenticationError:
            raise  # the same secret goes to every URL of the list: no point going on
        except (ConnectError, HandshakeError) as exc:
            if len(dialer.urls) == 1:
                raise
            failures.append(f"{url}: {exc}")
    if len(failures) == 1:
        raise ConnectError(failures[0])
    raise ConnectError("no broker answered: " + "; ".join(failures))


class Connector:
    """What :func:`connect` returns: ``await`` it for a Bus, or ``async with`` it to have
    the Bus closed (drained) on exit."""

    def __init__(self, url: str | Sequence[str] | None, options: ConnectOptions) -> None:
        self._url = url
        self._options = options
        self._bus: Bus | None = None

    def __await__(self) -> Generator[Any, None, Bus]:
        return _connect(self._url, self._options).__await__()

    async def __aenter__(self) -> Bus:
        self._bus = await _connect(self._url, self._options)
        return self._bus

    async def __aexit__(self, *exc_info: object) -> None:
        if self._bus is not None:
            await self._bus.close()


def connect(
    url: str | Sequence[str] | None = None,
    *,
    token: str | None = None,
    name: str | None = None,
    ssl: _ssl.SSLContext | None = None,
    options: ConnectOptions | None = None,
) -> Connector:
    """Connect to a broker at ``url``; see :class:`~asyncipc.ConnectOptions` for the rest.

    Without ``url``: ``$ASYNCIPC_URL`` when it is set (and then ``$ASYNCIPC_TOKEN`` as the
    token, unless one is given), else ``memory://``, the embedded broker of this event
    loop; an explicit ``memory://`` is always the embedded broker. Schemes:
    ``memory://[name]``, ``unix:///path.sock``, ``tcp://host:port``, ``tls://host:port``,
    ``fifo:///path``, ``pipe:`` (in a child started by :meth:`Broker.spawn`),
    ``nats://h1:4222,h2:4222`` (a NATS cluster, with the ``nats`` extra), and any a
    transport module registered. ``?token=`` in the URL sets the token.

    A list of URLs (``["unix:///run/a.sock", "tcp://10.0.0.2:4222"]``) names brokers
    that can stand in for each other: they are tried in order to connect, and in turn
    when the link drops. Every URL that reaches a broker process reconnects by default
    (``ConnectOptions(reconnect=False)`` turns it off); ``docs/guide.md``, "When the
    broker goes away", says what happens meanwhile.
    """
    if isinstance(url, list | tuple):
        if not url or not all(isinstance(u, str) for u in url):
            raise ConfigurationError(f"url must be a str or a non-empty list of str, not {url!r}")
    elif url is not None and not isinstance(url, str):
        raise ConfigurationError(f"url must be a str, not {type(url).__name__}")
    options = options or ConnectOptions()
    changes: dict[str, Any] = {}
    if token is not None:
        changes["token"] = token
    if name is not None:
        changes["name"] = name
    if ssl is not None:
        changes["ssl"] = ssl
    if changes:
        options = replace(options, **changes)
    return Connector(url, options)
