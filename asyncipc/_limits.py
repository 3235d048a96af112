"""The broker's connection limits: how many links, from whom, and how many still owe
their handshake (``BrokerOptions.max_connections``, ``max_connections_per_peer``,
``max_pending_handshakes``; docs/guide.md, Limits).

A module of its own, beside the broker, so that the bookkeeping (who counts against what,
and a refused link's last moments) is in one place. Nothing here does I/O beyond the
link it is handed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Generic, TypeVar

from ._logsafe import peer_log
from .errors import ConnectionClosed
from .link import Link, PeerInfo
from .options import BrokerOptions
from .protocol import Err, ErrorCode, Frame, Headers

__all__ = ["ConnectionLimits", "PeerKey", "peer_key"]


PeerKey = tuple[str, Any] | None
"""Whom a connection counts against for ``max_connections_per_peer`` (see peer_key)."""

S = TypeVar("S")

REFUSAL_LINGER = 0.5
"""Seconds a refused connection is kept, at most, to read what its client sent first."""
MAX_LINGERING = 64
"""Refused connections kept at once, lingering or held; past it a refusal closes at once
(their descriptors come out of :data:`FD_RESERVE`)."""
HOLD_SECONDS = 2.0
"""How long a connection refused for its address's failed handshakes is held, unread,
before the broker closes it (its client has its ERR at once and may close first)."""
STRIKE_DRAIN_SECONDS = 4.0
"""A failed-handshake bucket of ``max_failed_handshakes`` drains in this many seconds."""
FD_RESERVE = MAX_LINGERING + 64
"""File descriptors kept free under RLIMIT_NOFILE: for refused connections lingering,
listeners, stream files and the rest (see fd_cap)."""


def fd_cap() -> tuple[int, int] | None:
    """``(connections, soft limit)``: how many connections fit under this process's
    RLIMIT_NOFILE with :data:`FD_RESERVE` descriptors left over, or None without a limit.

    Why: past the limit ``accept()`` fails with EMFILE, and asyncio (3.11) then logs a
    traceback for each of up to ``backlog`` retries in the same callback, every second,
    while libuv (uvloop) accepts and closes the surplus: either way the client hears
    nothing useful. Kept below it, every connection is accepted and a surplus one is
    refused with an ERR that says why.
    """
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    return max(1, soft - FD_RESERVE), soft


def peer_key(peer: PeerInfo) -> PeerKey:
    """Whom a connection counts against for ``max_connections_per_peer``: its Unix user
    where the kernel names one (unix, fifo), its IP address on tcp and tls, else nobody
    (None: only ``max_connections`` applies)."""
    if peer.uid is not None:
        return ("uid", peer.uid)
    address = peer.address
    if peer.transport in ("tcp", "tls") and isinstance(address, tuple) and address:
        return ("address", address[0])
    return None


def _address_of(key: PeerKey) -> str | None:
    """The IP address ``key`` names, or None (a uid, or nobody): ``max_failed_handshakes``
    counts addresses only."""
    if key is not None and key[0] == "address":
        address: str = key[1]
        return address
    return None


def raise_fd_limit(connections: int) -> int | None:
    """Raise this process's soft RLIMIT_NOFILE towards its hard limit, far enough for
    ``connections`` plus :data:`FD_RESERVE`; return the new soft limit (None: unchanged).

    For the ``asyncipc broker`` command, as the Go runtime does for every program: the
    soft limit is often 1024 while the hard one is far higher, and an administrator who
    asked for ``--max-connections 10000`` means it. A library never changes it: the
    process is not the library's to configure.
    """
    try:
        import resource
    except ImportError:
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = connections + FD_RESERVE
        if soft == resource.RLIM_INFINITY or soft >= want:
            return None
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new <= soft:
            return None
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (OSError, ValueError):
        return None
    return new


class ConnectionLimits(Generic[S]):
    """Counts the broker's links (of type ``S``: its sessions) against its limits.

    In-process links (``link.in_process``: the adapters' buses, ``memory://``) are not
    counted: they are not connections anyone outside can open.
    """

    def __init__(self, options: BrokerOptions) -> None:
        self.options = options
        self.max_connections = options.max_connections
        """``max_connections``, lowered to what RLIMIT_NOFILE allows (:func:`fd_cap`)."""
        self.capped_by: int | None = None
        """The RLIMIT_NOFILE that lowered ``max_connections``, if it did."""
        cap = fd_cap()
        if cap is not None and cap[0] < self.max_connections:
            self.max_connections, self.capped_by = cap
        self._counted: dict[S, PeerKey] = {}
        self._per_peer: dict[PeerKey, int] = {}
        self._pending: set[S] = set()
        self._kept: set[Link] = set()  # the refused links lingering or held now
        # Failed handshakes per IP address: (bucket level, when it was last updated).
        self._strikes: dict[str, tuple[float, float]] = {}
        self._strikes_swept = 0.0

    @property
    def pending(self) -> int:
        """Connections that have not completed their handshake."""
        return len(self._pending)

    def refusal(self, link: Link) -> str | None:
        """Why ``link`` may not become a client now, or None."""
        if link.in_process:
            return None
        opts = self.options
        if len(self._counted) >= self.max_connections:
            why = (
                "max_connections"
                if self.capped_by is None
                else f"max_connections, lowered to fit RLIMIT_NOFILE {self.capped_by}"
            )
            return f"too many connections: the broker serves at most {self.max_connections} ({why})"
        key = peer_key(link.peer)
        address = _address_of(key)
        if address is not None and self._penalized(address):
            return (
                f"too many failed handshakes from address {address}: refused for a few "
                f"seconds (max_failed_handshakes {opts.max_failed_handshakes})"
            )
        if key is not None and self._per_peer.get(key, 0) >= opts.max_connections_per_peer:
            kind, who = key
            return (
                f"too many connections from {kind} {who}: at most "
                f"{opts.max_connections_per_peer} per peer (max_connections_per_peer)"
            )
        if len(self._pending) >= opts.max_pending_handshakes:
            return (
                "too many connections waiting for their handshake: at most "
                f"{opts.max_pending_handshakes} (max_pending_handshakes); try again"
            )
        return None

    def admitted(self, session: S, link: Link) -> None:
        """``session`` (over ``link``) is a client now, its handshake pending."""
        if link.in_process:
            return
        key = peer_key(link.peer)
        self._counted[session] = key
        if key is not None:
            self._per_peer[key] = self._per_peer.get(key, 0) + 1
        self._pending.add(session)

    def opened(self, session: S) -> None:
        """``session`` completed its handshake."""
        self._pending.discard(session)

    def closed(self, session: S) -> None:
        """``session`` has ended: its places are free. Ended before its handshake
        completed, it is a failed handshake of its address (max_failed_handshakes)."""
        failed = session in self._pending
        self._pending.discard(session)
        if session in self._counted:
            key = self._counted.pop(session)
            address = _address_of(key)
            if failed and address is not None:
                self._strike(address)
            if key is not None:
                left = self._per_peer[key] - 1
                if left:
                    self._per_peer[key] = left
                else:
                    del self._per_peer[key]

    # --- failed handshakes per address (max_failed_handshakes) ---------------------------

    def _level(self, address: str, now: float) -> float:
        """The bucket of ``address`` drained to ``now``."""
        level, since = self._strikes.get(address, (0.0, now))
        limit = self.options.max_failed_handshakes
        return max(0.0, level - (now - since) * limit / STRIKE_DRAIN_SECONDS)

    def _strike(self, address: str) -> None:
        limit = self.options.max_failed_handshakes
        if limit <= 0:
            return
        now = time.monotonic()
        self._strikes[address] = (min(2.0 * limit, self._level(address, now) + 1), now)
        if now - self._strikes_swept > STRIKE_DRAIN_SECONDS:
            # Forget the drained buckets: an address is remembered for seconds, not forever.
            self._strikes_swept = now
            for other in [a for a in self._strikes if self._level(a, now) == 0]:
                del self._strikes[other]

    def _penalized(self, address: str) -> bool:
        """Whether one more failure would overflow the bucket of ``address``: it has
        failed ``max_failed_handshakes`` times faster than the bucket drains."""
        limit = self.options.max_failed_handshakes
        return (
            limit > 0
            and address in self._strikes
            and self._level(address, time.monotonic()) + 1 > limit
        )

    def refuse(self, link: Link, reason: str) -> None:
        """Tell ``link``'s client why it is refused (ERR ``LIMIT``), then hang up.

        Not at once: a client sends its preamble and HELLO as soon as it connects, and a
        socket closed with bytes unread is reset, which can lose the ERR before the
        client reads it. So the link stays until its first frame (the HELLO) is read,
        or :data:`REFUSAL_LINGER` seconds, whichever comes first. A link refused because
        its address failed too many handshakes is held instead, unread, for
        :data:`HOLD_SECONDS` (``Link.hold``). Only :data:`MAX_LINGERING` are kept at a
        time, so that a flood of refused connections cannot hold more sockets open.
        """
        # One line, then a summary: a flood of refused connections must not flood the log.
        peer_log().warning("refused connection", "refused %s: %s", link.peer.describe(), reason)
        address = _address_of(peer_key(link.peer))
        penalized = False
        if address is not None:
            # A refusal over a limit is a failed handshake too. One for failed handshakes
            # is not: the bucket drains meanwhile, so a client retrying gets in.
            penalized = self._penalized(address)
            if not penalized:
                self._strike(address)
        try:
            link.send(Err(ErrorCode.LIMIT, reason))
        except ConnectionClosed:
            return
        if len(self._kept) >= MAX_LINGERING:
            link.close()
            return
        self._kept.add(link)
        if penalized:
            # Held, unread, for HOLD_SECONDS: an honest client has its ERR now and hangs
            # up itself; a reconnect loop waits out the hold instead of costing the
            # broker an accept and a close thousands of times a second.
            link.hold()
        link.set_receiver(_Refused(self, link, HOLD_SECONDS if penalized else REFUSAL_LINGER))

    def _linger_ended(self, link: Link) -> None:
        self._kept.discard(link)

    def close_refused(self) -> list[Link]:
        """Close the refused links still kept (broker shutdown); return them."""
        kept = list(self._kept)
        for link in kept:
            link.close()
        return kept


class _Refused:
    """The receiver of a refused link for its last moments: it reads and discards what
    the client sent, and closes the link on the first frame or at the deadline (a held
    link reads nothing: only the deadline or its client ends it)."""

    def __init__(self, limits: ConnectionLimits[Any], link: Link, delay: float) -> None:
        self._limits: ConnectionLimits[Any] | None = limits
        self._link = link
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            delay, self._close
        )

    def _close(self) -> None:
        self._timer = None
        self._link.close()

    def frame_received(self, frame: Frame) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._close()

    def link_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._limits is not None:
            self._limits._linger_ended(self._link)
            self._limits = None

    def writing_resumed(self) -> None:
        pass

    def pub_received(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        pass

    def msg_received(
        self, sid: int, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        pass
