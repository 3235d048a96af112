"""A datagram socket on the event loop, and what its links are configured and counted by.

:class:`DatagramSocket` owns one non-blocking socket. It reads with ``recvmsg`` in batches
rather than through asyncio's datagram transport, which reads one datagram per loop turn
and hides the ancillary data that carries the kernel's drop count (``SO_RXQ_OVFL``). It
never queues a datagram: a link keeps what the socket would not take
(``asyncipc/transports/_datagram/link.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ..._logsafe import RateLimitedLog

__all__ = ["DatagramSettings", "DatagramSocket", "DatagramStats", "RateLimitedLog", "Sender"]

log = logging.getLogger("asyncipc.transport")

SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40 if sys.platform == "linux" else None)
_U32 = struct.Struct("=I")  # SO_RXQ_OVFL's count is a native-endian u32
_RECV_BUFFER = 65536  # every UDP payload fits (IPv4 65,507; IPv6 65,527)
_READ_BATCH = 64  # datagrams per read callback, so one busy socket cannot starve the loop


class Sender(Protocol):
    """What the socket asks of a link that is waiting to send (a ``DatagramLink``): a
    Protocol, so that this module does not import the link module that imports it."""

    def socket_writable(self) -> None:
        """The socket's buffer has room again: send what was held back."""
        ...


S = TypeVar("S", bound=Sender)


@dataclass(frozen=True)
class DatagramSettings:
    """Tunables of a datagram link, from the URL query (``udp://host:port?window=64``)."""

    max_datagram: int = 65507
    window: int = 64
    """Datagrams in flight (sent, not yet acknowledged) before the sender waits."""
    window_bytes: int = 256 * 1024
    """Bytes in flight before the sender waits; one datagram may always go."""
    rcvbuf: int = 4 * 1024 * 1024
    """SO_RCVBUF asked for; the kernel caps it (Linux: net.core.rmem_max)."""
    idle_timeout: float = 180.0
    """Broker: a peer silent this long is dropped, whatever the keep-alive does. 0: never."""
    max_peers: int = 4096
    """Broker: peers at once on one listener; HELLOs beyond are dropped and counted."""


@dataclass
class DatagramStats:
    """What one datagram link saw; ``peer.extra["stats"]`` of a udp link (and so
    ``bus.peer.extra["stats"]``, and each of ``broker.peers``)."""

    sent: int = 0
    """Datagrams carrying a frame handed to the socket."""
    received: int = 0
    """Datagrams carrying a frame that arrived (late ones included, duplicates not)."""
    lost: int = 0
    """Sequence numbers the peer used that never arrived (a gap; less the late arrivals)."""
    reordered: int = 0
    """Datagrams that arrived after a later one (they fill a gap; delivered)."""
    duplicates: int = 0
    """Datagrams seen twice (dropped)."""
    malformed: int = 0
    """Datagrams of this peer whose frame did not decode (dropped)."""
    oversized: int = 0
    """Frames over our maximum that the peer sent anyway (dropped)."""
    overruns: int = 0
    """Frames dropped because we were paused and the peer ignored its window."""
    kernel_drops: int = 0
    """Datagrams the kernel dropped on a full receive buffer (``SO_RXQ_OVFL``, Linux) on
    this link's own socket; a broker's shared socket counts in its listener's stats."""
    send_errors: int = 0
    """Datagrams the socket refused (counted, dropped: the receiver sees a gap)."""
    window_stalls: int = 0
    """Times the sender had to wait for the peer's acknowledgement."""
    probes: int = 0
    """Probes sent while stalled (an acknowledgement was late or lost)."""


class DatagramSocket(Generic[S]):
    """One non-blocking datagram socket on the event loop. Subclasses say what a datagram
    is for; sending never queues here: a link keeps what the socket would not take."""

    def __init__(self, sock: socket.socket, settings: DatagramSettings) -> None:
        self.sock = sock
        self.settings = settings
        self.kernel_drops = 0
        self.log = RateLimitedLog()
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray(_RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._anc = socket.CMSG_SPACE(4) if SO_RXQ_OVFL is not None else 0
        self._writers: set[S] = set()
        self._closed = False
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, settings.rcvbuf)
        if SO_RXQ_OVFL is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            except OSError:
                self._anc = 0
        self._loop.add_reader(sock.fileno(), self._read_ready)

    @property
    def rcvbuf(self) -> int:
        """The receive buffer the kernel granted (Linux reports twice what it counts)."""
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def _read_ready(self) -> None:
        sock, buf, view = self.sock, self._buf, self._view
        try:
            for _ in range(_READ_BATCH):
                try:
                    n, anc, _flags, addr = sock.recvmsg_into([buf], self._anc)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    self.read_error(exc)
                    if self._closed:
                        return
                    continue
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
                        self.kernel_drops = _U32.unpack_from(data)[0]
                self.datagram_received(bytes(view[:n]), addr)
                if self._closed:
                    return
        finally:
            if not self._closed:
                self.batch_done()

    def send(self, parts: list[bytes], addr: Any, link: S | None = None) -> bool:
        """Hand one datagram to the socket. False when its buffer is full: ``link`` (if
        given) is called back through ``socket_writable`` once it drains; without one (control
        datagrams) the datagram is simply not sent. Other OS errors are raised."""
        if self._writers and link is not None:
            self._writers.add(link)  # others wait already: keep their turn
            return False
        try:
            if addr is None:
                self.sock.sendmsg(parts)
            else:
                self.sock.sendmsg(parts, (), 0, addr)
        except (BlockingIOError, InterruptedError):
            if link is not None:
                if not self._writers:
                    self._loop.add_writer(self.sock.fileno(), self._write_ready)
                self._writers.add(link)
            return False
        return True

    def _write_ready(self) -> None:
        self._loop.remove_writer(self.sock.fileno())
        writers, self._writers = self._writers, set()
        for link in writers:
            link.socket_writable()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        fd = self.sock.fileno()
        if fd >= 0:
            self._loop.remove_reader(fd)
            if self._writers:
                self._loop.remove_writer(fd)
        self._writers.clear()
        self._view.release()
        self.sock.close()

    # --- what a datagram is for (subclasses) -----------------------------------------

    def datagram_received(self, data: bytes, addr: Any) -> None:
        raise NotImplementedError

    def batch_done(self) -> None:
        """A read callback ended: acknowledgements that were asked for go out now."""

    def read_error(self, exc: OSError) -> None:
        self.log.warning("read", "udp socket error: %s", exc)

    def forget(self, link: S) -> None:
        """``link`` closed."""
