"""What the broker counts: :class:`BrokerStats`, and :class:`TransportStats` per channel.

A module of its own, below the broker and its sessions, so that a session can count its
client's traffic without importing the broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BrokerStats", "TransportStats"]


@dataclass(slots=True)
class TransportStats:
    """Counters for the clients of one transport (``link.transport``) since the broker
    started. Bytes are payload bytes; ``messages_out`` counts deliveries (one message to
    three subscribers is three)."""

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
    transports: dict[str, TransportStats] = field(default_factory=dict)
    """The same counters by transport (``"unix"``, ``"tcp"``, ``"http"``...), with bytes:
    what ``/metrics`` of the HTTP adapter reports."""

    def transport(self, name: str) -> TransportStats:
        """The counters of transport ``name``, created on first use."""
        counters = self.transports.get(name)
        if counters is None:
            counters = self.transports[name] = TransportStats()
        return counters
