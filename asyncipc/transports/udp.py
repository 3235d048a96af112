"""``udp://host:port``: UDP, one frame per datagram, best effort.

What it promises and what it does not is in ``docs/transports.md`` (UDP); the datagram
layout in ``docs/protocol.md`` §21. In short: delivery and order are not promised, loss
the receiver can see is counted (``peer.extra["stats"]``: sequence gaps, late and
duplicate datagrams, the kernel's drop count), a frame larger than a datagram is refused
at the sender with :class:`~asyncipc.FrameTooLarge`, and a window of unacknowledged
datagrams keeps a fast sender from overrunning a slow receiver.

A broker listens on one socket and tells its peers apart by address (and the connection
id each client picks): a HELLO from a new address starts a session, anything else from an
address without one is dropped and counted in :attr:`UdpListener.stats`, as is garbage.

URL options (listening and connecting): ``max_datagram`` (bytes, 1232..65507, default
65507), ``window`` (datagrams in flight, 64), ``window_bytes`` (262144), ``rcvbuf`` (bytes
asked for SO_RCVBUF, 4 MiB); listening only: ``idle_timeout`` (seconds, 180; 0 = never)
and ``max_peers`` (4096).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass, fields
from typing import Any

from ..errors import BrokenLinkError, ConfigurationError, ConnectError, ProtocolError
from ..link import Accept, Link, Listener, PeerInfo
from ..protocol import Op
from ..protocol.datagram import FIN, MAX_DATAGRAM, MIN_DATAGRAM, RESET, pack_header, parse_datagram
from . import URL, TransportOptions, register
from ._datagram.link import DatagramLink
from ._datagram.sockets import DatagramSettings, DatagramSocket, DatagramStats

__all__ = [
    "DatagramStats",
    "UdpListener",
    "UdpListenerStats",
    "UdpTransport",
    "settings_from_url",
]

_RESETS_PER_SECOND = 20


def settings_from_url(url: URL) -> DatagramSettings:
    """The ``?max_datagram=&window=...`` options, checked; ConfigurationError says which."""
    q = url.query
    known = {f.name for f in fields(DatagramSettings)}
    unknown = sorted(set(q) - known - {"token"})
    if unknown:
        raise ConfigurationError(
            f"unknown udp URL option(s) {', '.join(unknown)} in {url.raw!r} "
            f"(known: {', '.join(sorted(known))})"
        )
    values: dict[str, Any] = {}
    for f in fields(DatagramSettings):
        if f.name not in q:
            continue
        kind = float if f.name == "idle_timeout" else int
        try:
            value = kind(q[f.name])
        except ValueError:
            raise ConfigurationError(f"udp option {f.name}={q[f.name]!r} is not a number") from None
        if value < 0 or (value == 0 and f.name != "idle_timeout"):
            raise ConfigurationError(f"udp option {f.name}={q[f.name]!r} must be positive")
        values[f.name] = value
    settings = DatagramSettings(**values)
    if not MIN_DATAGRAM <= settings.max_datagram <= MAX_DATAGRAM:
        raise ConfigurationError(
            f"udp option max_datagram={settings.max_datagram} is outside "
            f"{MIN_DATAGRAM}..{MAX_DATAGRAM} (the largest UDP payload over IPv4)"
        )
    return settings


def _socket_for(infos: list[Any]) -> tuple[socket.socket, Any]:
    family, kind, proto, _, addr = infos[0]
    return socket.socket(family, kind, proto), addr


@dataclass
class UdpListenerStats:
    """What a broker's UDP socket saw, beyond what its sessions' links count."""

    datagrams: int = 0
    """Every datagram read from the socket."""
    malformed: int = 0
    """Datagrams that are not of this protocol (bad magic, version, truncated frame...)."""
    unexpected: int = 0
    """Well-formed datagrams from a peer without a session (no HELLO, or a stale one)."""
    oversized: int = 0
    """Datagrams larger than ``max_datagram``."""
    refused: int = 0
    """HELLOs dropped: ``max_peers`` reached, or the listener is closing."""
    resets: int = 0
    """RESETs sent to peers that spoke of a connection we do not know."""
    kernel_drops: int = 0
    """Datagrams the kernel dropped because the socket's buffer was full (SO_RXQ_OVFL)."""
    peers: int = 0
    """Sessions on this listener now."""
    peers_total: int = 0
    """Sessions started on this listener in total."""
    peers_timed_out: int = 0
    """Sessions dropped after ``idle_timeout`` of silence."""


class UdpListener(DatagramSocket[DatagramLink], Listener):
    """A broker's UDP socket: one :class:`DatagramLink` per peer address."""

    def __init__(
        self,
        url: str,
        sock: socket.socket,
        accept: Accept,
        options: TransportOptions,
        settings: DatagramSettings,
    ) -> None:
        super().__init__(sock, settings)
        self.url = url
        self.stats = UdpListenerStats()
        self._accept = accept
        self._options = options
        self._links: dict[Any, DatagramLink] = {}
        self._touched: set[DatagramLink] = set()
        self._accepting = True
        self._reset_budget = (0.0, 0)
        self._reaper: asyncio.TimerHandle | None = None
        if settings.idle_timeout > 0:
            self._reaper = self._loop.call_later(settings.idle_timeout / 4, self._reap)

    @property
    def links(self) -> list[DatagramLink]:
        """The peers' links, one per address."""
        return list(self._links.values())

    def datagram_received(self, data: bytes, addr: Any) -> None:
        stats = self.stats
        stats.datagrams += 1
        stats.kernel_drops = self.kernel_drops
        if len(data) > self.settings.max_datagram:
            stats.oversized += 1
            self.log.warning(
                "oversized", "udp: dropped a datagram of %d bytes from %s", len(data), addr
            )
            return
        try:
            env = parse_datagram(data)
        except ProtocolError as exc:
            stats.malformed += 1
            self.log.warning("malformed", "udp: dropped a datagram from %s: %s", addr, exc)
            return
        link = self._links.get(addr)
        if link is not None and link.conn == env.conn:
            link.envelope_received(env)
            self._touched.add(link)
            return
        if env.flags & (FIN | RESET):
            return  # the end of a connection we no longer know: nothing to say
        if not (env.frame and env.frame[4] == Op.HELLO):
            stats.unexpected += 1
            self.log.warning(
                "unexpected",
                "udp: dropped a datagram from %s, which has no session (no HELLO)",
                addr,
            )
            self._reset(addr, env.conn)
            return
        if not self._accepting or len(self._links) >= self.settings.max_peers:
            stats.refused += 1
            self.log.warning(
                "refused",
                "udp: refused a HELLO from %s: %s",
                addr,
                "closing" if not self._accepting else f"{len(self._links)} peers already",
            )
            return
        if link is not None:
            # The same address with a new connection id: the old client is gone (a
            # restart that got the same port back). Its session ends here.
            link.fail(BrokenLinkError(f"{link.peer.describe()}: replaced by a new connection"))
        link = DatagramLink(
            self, addr, env.conn, self._options, server_side=True, peer=PeerInfo("udp", addr)
        )
        self._links[addr] = link
        stats.peers = len(self._links)
        stats.peers_total += 1
        self._accept(link)
        link.envelope_received(env)
        self._touched.add(link)

    def _reset(self, addr: Any, conn: int) -> None:
        """Tell a peer we do not know its connection, so that a client whose session was
        dropped learns it at once. Rate-limited, and never bigger than what came in."""
        now = self._loop.time()
        start, count = self._reset_budget
        if now - start >= 1.0:
            start, count = now, 0
        if count >= _RESETS_PER_SECOND:
            return
        self._reset_budget = (start, count + 1)
        with contextlib.suppress(OSError):
            if self.send([pack_header(RESET, conn, 0, 0)], addr):
                self.stats.resets += 1

    def batch_done(self) -> None:
        touched, self._touched = self._touched, set()
        for link in touched:
            link.batch_done()

    def forget(self, link: DatagramLink) -> None:
        if self._links.get(link.addr) is link:
            del self._links[link.addr]
            self.stats.peers = len(self._links)
        self._touched.discard(link)
        if not self._accepting and not self._links:
            self.close()

    def _reap(self) -> None:
        """Drop peers silent for ``idle_timeout``: a UDP peer that vanished sends no FIN,
        and with keep-alive off nothing else would notice."""
        timeout = self.settings.idle_timeout
        self._reaper = self._loop.call_later(timeout / 4, self._reap)
        now = self._loop.time()
        for link in list(self._links.values()):
            idle = now - link.last_activity
            if idle >= timeout:
                self.stats.peers_timed_out += 1
                why = f"{link.peer.describe()}: no datagram for {idle:.1f} s"
                link.fail(BrokenLinkError(why), fin=True)

    async def aclose(self) -> None:
        """Stop accepting peers. The socket stays open for the links already accepted
        (they share it) until the broker has closed the last of them."""
        self._accepting = False
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        if not self._links:
            self.close()


class _ClientSocket(DatagramSocket[DatagramLink]):
    """A client's own socket, connected to the broker's address: the kernel drops
    datagrams from anyone else, and reports ICMP "port unreachable" as a refused
    connection."""

    link: DatagramLink

    def datagram_received(self, data: bytes, addr: Any) -> None:
        link = self.link
        link.stats.kernel_drops = self.kernel_drops
        try:
            env = parse_datagram(data)
        except ProtocolError as exc:
            link.stats.malformed += 1
            self.log.warning("malformed", "udp: dropped a datagram from %s: %s", addr, exc)
            return
        if env.conn != link.conn:
            link.stats.malformed += 1  # another connection's: a stale one
            return
        link.envelope_received(env)

    def batch_done(self) -> None:
        self.link.batch_done()

    def read_error(self, exc: OSError) -> None:
        if isinstance(exc, ConnectionRefusedError):
            self.link.fail(BrokenLinkError(f"{self.link.peer.describe()}: connection refused"))
        else:
            super().read_error(exc)

    def forget(self, link: DatagramLink) -> None:
        self.close()


class UdpTransport:
    """The ``udp`` scheme."""

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        if not url.host or url.port is None:
            raise ConfigurationError(f"udp URL {url.raw!r} needs host:port")
        settings = settings_from_url(url)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(url.host, url.port, type=socket.SOCK_DGRAM)
            sock, addr = _socket_for(infos)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {url.raw}: {exc.strerror or exc}") from None
        try:
            sock.setblocking(False)
            sock.connect(addr)  # UDP: no packet is sent; it fixes the peer and our port
        except OSError as exc:
            sock.close()
            raise ConnectError(f"cannot connect to {url.raw}: {exc.strerror or exc}") from None
        endpoint = _ClientSocket(sock, settings)
        conn = int.from_bytes(os.urandom(4), "big") or 1
        endpoint.link = DatagramLink(
            endpoint, None, conn, options, server_side=False, peer=PeerInfo("udp", addr)
        )
        return endpoint.link

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        if url.port is None:
            raise ConfigurationError(f"udp URL {url.raw!r} needs a port (0: any free)")
        settings = settings_from_url(url)
        host = url.host or "127.0.0.1"
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, url.port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
            )
            sock, addr = _socket_for(infos)
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {url.raw}: {exc.strerror or exc}") from None
        try:
            sock.bind(addr)
        except OSError as exc:
            sock.close()
            raise ConfigurationError(f"cannot listen on {url.raw}: {exc.strerror or exc}") from None
        port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        return UdpListener(f"udp://{shown}:{port}", sock, accept, options, settings)


register("udp", UdpTransport())
