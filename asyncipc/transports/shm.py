"""``shm://name``: rings in shared memory between processes of one user (Linux).

A broker listening on ``shm://name`` binds a control socket ``<dir>/name.sock`` (``dir``
is ``/dev/shm/asyncipc-<uid>``, 0700, unless ``?dir=`` says otherwise). Each client that
connects gets its own pair of rings in a fresh ``memfd`` segment, sealed against
resizing, handed over with two ``eventfd`` doorbells through that socket; from then on
every frame crosses through shared memory. ``docs/transports.md`` lists the guarantees,
``docs/shm.md`` the ring.

URL options (both sides): ``size`` data bytes per ring (``64K``..``1G``, default ``4M``;
a client may ask for its own), ``checksum`` (``crc32`` or ``none``; the default is none on
x86-64 and crc32 elsewhere, see ``docs/shm.md``), ``spin`` (seconds a side polls after
the last record before it sleeps, default 0.0002), ``dir``.

Segments need no clean-up: a ``memfd`` has no name and its memory is freed when the last
process mapping it lets go, crashed or not. The only file is the control socket, which
a new listener replaces when the old one is dead.

Without a broker, :func:`listen_channel` / :func:`connect_channel` give two processes a
direct :class:`~asyncipc.transports._ring.channel.RingChannel` of byte records.
"""

from __future__ import annotations

import fcntl
import os
import platform

from ..errors import ConfigurationError
from ..link import Accept, Link, Listener
from . import URL, TransportOptions, parse_url, register
from ._ring.channel import ChannelListener, RingChannel
from ._ring.link import RingLink
from ._ring.port import DEFAULT_SPIN
from ._ring.setup import (
    Endpoint,
    check_name,
    connect_control,
    default_dir,
    listen_control,
    parse_size,
    private_dir,
)

__all__ = ["ShmTransport", "connect_channel", "listen_channel"]

CHECKSUM_DEFAULT = platform.machine().lower() not in ("x86_64", "amd64")
"""Payload CRC-32 by default where the CPU does not order stores (``docs/shm.md``)."""


class _Settings:
    def __init__(self, url: URL) -> None:
        if url.scheme != "shm":
            raise ConfigurationError(f"not a shm:// URL: {url.raw!r}")
        self.name = check_name(url.name, url.raw)
        q = url.query
        unknown = set(q) - {"size", "checksum", "spin", "dir"}
        if unknown:
            raise ConfigurationError(f"unknown option(s) {sorted(unknown)} in {url.raw!r}")
        self.size = parse_size(q["size"]) if "size" in q else None
        self.checksum = _checksum(q.get("checksum"), url.raw)
        self.spin = _spin(q.get("spin"), url.raw)
        self.dir = q.get("dir") or default_dir()
        self.path = os.path.join(self.dir, f"{self.name}.sock")

    def url(self) -> str:
        extra = [f"dir={self.dir}"] if self.dir != default_dir() else []
        return f"shm://{self.name}" + (f"?{'&'.join(extra)}" if extra else "")


def _checksum(value: str | None, raw: str) -> bool | None:
    if value is None:
        return None
    if value.lower() in ("crc32", "on", "1", "true"):
        return True
    if value.lower() in ("none", "off", "0", "false"):
        return False
    raise ConfigurationError(f"bad checksum {value!r} in {raw!r}: expected crc32 or none")


def _spin(value: str | None, raw: str) -> float:
    if value is None:
        return DEFAULT_SPIN
    try:
        spin = float(value)
    except ValueError:
        spin = -1.0
    if not 0 <= spin <= 1:
        raise ConfigurationError(f"bad spin {value!r} in {raw!r}: seconds between 0 and 1")
    return spin


def memfd_segment(size: int, label: str) -> tuple[int, None]:
    """A sealed, 0600 ``memfd`` of ``size`` bytes: nameless, freed with its last user."""
    fd = os.memfd_create(label[:240], os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        os.fchmod(fd, 0o600)
        fcntl.fcntl(
            fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
        )
    except BaseException:
        os.close(fd)
        raise
    return fd, None


def _check_platform() -> None:
    if not hasattr(os, "memfd_create") or not hasattr(os, "eventfd"):
        raise ConfigurationError("shm:// needs Linux (memfd_create and eventfd)")


class ShmTransport:
    """The ``shm`` scheme."""

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        _check_platform()
        s = _Settings(url)
        private_dir(s.dir, create=False)
        endpoint = await connect_control(
            url.raw,
            s.path,
            kind="link",
            transport="shm",
            address=s.name,
            size=s.size,
            checksum=s.checksum,
            timeout=options.connect_timeout,
            sealed=True,
        )
        return RingLink.from_endpoint(endpoint, "shm", options, s.spin, server=False)

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        _check_platform()
        s = _Settings(url)
        private_dir(s.dir, create=True)

        def on_endpoint(endpoint: Endpoint) -> None:
            accept(RingLink.from_endpoint(endpoint, "shm", options, s.spin, server=True))

        return await listen_control(
            s.url(),
            s.path,
            kind="link",
            transport="shm",
            address=s.name,
            capacity=s.size or parse_size(None),
            checksum=CHECKSUM_DEFAULT if s.checksum is None else s.checksum,
            make_segment=memfd_segment,
            on_endpoint=on_endpoint,
        )


async def listen_channel(url: str) -> ChannelListener:
    """Serve direct channels on ``shm://name``: ``await listener.accept()`` for each peer.

    No broker, no frames: a :class:`RingChannel` carries byte records between exactly two
    processes, the shortest path this library has between them (``docs/transports.md``).
    """
    _check_platform()
    s = _Settings(parse_url(url))
    private_dir(s.dir, create=True)
    listener = ChannelListener()
    listener.control = await listen_control(
        s.url(),
        s.path,
        kind="channel",
        transport="shm",
        address=s.name,
        capacity=s.size or parse_size(None),
        checksum=CHECKSUM_DEFAULT if s.checksum is None else s.checksum,
        make_segment=memfd_segment,
        on_endpoint=lambda ep: listener.put(RingChannel.from_endpoint(ep, spin=s.spin)),
    )
    return listener


async def connect_channel(url: str, *, timeout: float = 5.0) -> RingChannel:
    """Open a direct channel to a :func:`listen_channel` on ``shm://name``."""
    _check_platform()
    s = _Settings(parse_url(url))
    private_dir(s.dir, create=False)
    endpoint = await connect_control(
        url,
        s.path,
        kind="channel",
        transport="shm",
        address=s.name,
        size=s.size,
        checksum=s.checksum,
        timeout=timeout,
        sealed=True,
    )
    return RingChannel.from_endpoint(endpoint, spin=s.spin)


register("shm", ShmTransport())
