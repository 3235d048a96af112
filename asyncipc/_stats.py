"""What the broker counts: :class:`BrokerStats`, and :class:`TransportStats` per
connection, summed per channel.

A module of its own, below the broker and its sessions, so that a session can count its
client's traffic without importing the broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

__all__ = ["BrokerStats", "TransportStats"]


@dataclass(slots=True)
class TransportStats:
    """Counters of one connection (``Session.counters``), or their sum for the clients of
    one transport (``link.transport``) since the broker started
    (:meth:`BrokerStats.transport`). Bytes are payload bytes; ``messages_out`` counts
    deliveries (one message to three subscribers is three)."""

    connections: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    dropped: int = 0


@dataclass
class BrokerStats:
    """Counters since the broker started."""

    connections: int = 0
    """Links accepted in total."""
    messages_in: int = 0
    messages_out: int = 0
    dropped: int = 0
    """Messages a slow subscriber lost to ``drop_new``/``drop_oldest`` at the broker."""
    slow_consumers: int = 0
    """Subscriptions cut off as slow consumers: ``overflow="error"`` ones that fell behind,
    and ``overflow="block"`` ones that held their publishers back longer than
    ``BrokerOptions.block_timeout``."""
    no_responders: int = 0
    refused_connections: int = 0
    """Connections refused by a limit (``max_connections``, ``max_connections_per_peer``,
    ``max_pending_handshakes``)."""
    permission_denied: int = 0
    """Publishes, requests and subscriptions refused by a user's permissions."""
    # Each connection counts into a TransportStats of its own (``connection``), which the
    # broker bumps on its hot path anyway: so /connz knows every client's own traffic at no
    # cost per message. The figures by transport are summed when asked for, from these and
    # from the counters of the connections that have ended (``retire``).
    _live: dict[str, dict[int, TransportStats]] = field(default_factory=dict, repr=False)
    _ended: dict[str, TransportStats] = field(default_factory=dict, repr=False)

    def connection(self, name: str) -> TransportStats:
        """Package-internal: the counters of a new connection of transport ``name``.
        They count in :meth:`transport` until :meth:`retire`, and after it."""
        counters = TransportStats()
        self._live.setdefault(name, {})[id(counters)] = counters
        return counters

    def retire(self, name: str, counters: TransportStats) -> None:
        """Package-internal: that connection has ended: keep its counts in the totals."""
        live = self._live.get(name)
        if live is None or live.pop(id(counters), None) is None:
            # Its link was renamed after it was counted: find it under its first name.
            for other, conns in self._live.items():
                if conns.pop(id(counters), None) is not None:
                    name = other
                    break
            else:
                return  # retired already
        ended = self._ended.get(name)
        if ended is None:
            ended = self._ended[name] = TransportStats()
        for key in _FIELDS:
            setattr(ended, key, getattr(ended, key) + getattr(counters, key))

    def add(self, name: str, **counts: int) -> None:
        """Package-internal: counts of transport ``name`` that belong to no connection
        (what an adapter's call dropped, say). A write through :meth:`transport` would be
        lost: that is a sum made when asked."""
        ended = self._ended.get(name)
        if ended is None:
            ended = self._ended[name] = TransportStats()
        for key, n in counts.items():
            setattr(ended, key, getattr(ended, key) + n)

    def transport(self, name: str) -> TransportStats:
        """The counters of transport ``name`` (``"unix"``, ``"tcp"``, ``"http"``...): a
        snapshot, the sum over its connections, those connected and those gone."""
        total = TransportStats()
        parts = list(self._live.get(name, {}).values())
        ended = self._ended.get(name)
        if ended is not None:
            parts.append(ended)
        for key in _FIELDS:
            setattr(total, key, sum(getattr(p, key) for p in parts))
        return total

    @property
    def transports(self) -> dict[str, TransportStats]:
        """:meth:`transport` for every transport that has had a connection: what
        ``/metrics`` of the HTTP adapter reports."""
        return {name: self.transport(name) for name in sorted(self._live.keys() | self._ended)}


_FIELDS = tuple(f.name for f in fields(TransportStats))
