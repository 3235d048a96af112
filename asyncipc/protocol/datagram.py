"""The datagram envelope: one frame per datagram, for best-effort channels (``udp://``).

Sans-I/O like the rest of the package: bytes in, values out, no socket. A datagram is a
16-byte header followed by at most one frame, encoded exactly as on a stream
(``u32 length | u8 op | body``); ``docs/protocol.md`` §21 specifies it::

    0  2  magic   "AU"
    2  1  version 1
    3  1  flags   ACK_REQ=1 FIN=2 RESET=4
    4  4  conn    the connection id, chosen at random by the client
    8  4  seq     this frame's number (or, without a frame, the last one sent)
   12  4  ack     the highest number the sender has received and handed on

The sequence number is what lets a receiver *see* loss: every datagram that carries a
frame takes the next number, so a gap is a datagram that did not arrive (yet), and one
that fills an old gap arrived out of order. :class:`SequenceTracker` keeps that count.
``ack`` is what lets a sender *avoid* loss: it keeps at most a window of unacknowledged
datagrams in flight, so a receiver that is slow, or paused on purpose, holds the sender
back instead of overflowing its socket buffer (the sliding window of TCP, without the
retransmission: a datagram that is lost stays lost and is only counted).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from enum import IntEnum, IntFlag
from typing import Final, NamedTuple

from ..errors import FrameTooLarge, RemoteProtocolError
from .decoder import parse_frame
from .frames import MSG_EXTRA, Frame, Op

__all__ = [
    "ACK_REQ",
    "DATAGRAM_OVERHEAD",
    "FIN",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_DATAGRAM",
    "MIN_DATAGRAM",
    "RESET",
    "VERSION",
    "Arrival",
    "Envelope",
    "Flag",
    "SequenceTracker",
    "decode_frame",
    "pack_header",
    "parse_datagram",
    "seq_after",
]

MAGIC: Final = b"AU"
VERSION: Final = 1
HEADER_SIZE: Final = 16
MAX_DATAGRAM: Final = 65507
"""The largest UDP payload over IPv4 (65,535 - 20 bytes of IP header - 8 of UDP header);
the default and the upper bound of ``?max_datagram=``."""
MIN_DATAGRAM: Final = 1232
"""The smallest ``?max_datagram=`` accepted: what fits in IPv6's minimum MTU of 1,280
(- 40 - 8). It leaves a maximum frame above the 1,024 a HELLO must announce."""
DATAGRAM_OVERHEAD: Final = HEADER_SIZE + 4 + MSG_EXTRA
"""A datagram of ``max_datagram`` bytes carries a PUB whose frame length is at most
``max_datagram - DATAGRAM_OVERHEAD``: room for the header, the frame's length prefix, and
the 4 bytes a MSG adds to the PUB it forwards (so every PUB accepted stays deliverable)."""

_HEADER = struct.Struct(">2sBBIII")
_LEN = struct.Struct(">I")
_MASK = 0xFFFFFFFF
_HALF = 1 << 31


class Flag(IntFlag):
    """Header flags. A datagram without a frame is a control datagram."""

    ACK_REQ = 1
    """Acknowledge soon: the sender's window is filling up (on a control datagram: the
    sender is stalled and probes, and ``seq`` is the last number it sent)."""
    FIN = 2
    """The sender closed the link; nothing more comes on this connection."""
    RESET = 4
    """Sent by a broker to a datagram for a connection it does not know (it restarted, or
    timed the client out): the receiving link is broken."""


# The flags as plain ints for the hot paths: an IntFlag's & costs a microsecond.
ACK_REQ: Final = 1
FIN: Final = 2
RESET: Final = 4


def pack_header(flags: int, conn: int, seq: int, ack: int) -> bytes:
    """The 16 header bytes."""
    return _HEADER.pack(MAGIC, VERSION, flags, conn, seq & _MASK, ack & _MASK)


class Envelope(NamedTuple):
    """A parsed datagram: header fields and the frame's bytes (``b""`` when none)."""

    flags: int
    conn: int
    seq: int
    ack: int
    frame: bytes


def parse_datagram(data: bytes) -> Envelope:
    """Split a datagram into its header and frame bytes.

    Raises :class:`~asyncipc.RemoteProtocolError` for anything that is not a datagram of
    this protocol: too short, wrong magic or version, a connection id of 0, or a frame
    whose length prefix disagrees with the datagram's size (a truncated or padded frame).
    """
    if len(data) < HEADER_SIZE:
        raise RemoteProtocolError(f"datagram of {len(data)} bytes is shorter than the header")
    magic, version, flags, conn, seq, ack = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RemoteProtocolError(f"datagram does not start with {MAGIC!r}: {bytes(data[:8])!r}")
    if version != VERSION:
        raise RemoteProtocolError(f"datagram of protocol version {version}; this speaks {VERSION}")
    if conn == 0:
        raise RemoteProtocolError("datagram with connection id 0")
    frame = data[HEADER_SIZE:]
    if frame:
        if len(frame) < 5:
            raise RemoteProtocolError(f"frame of {len(frame)} bytes in a datagram (at least 5)")
        length = _LEN.unpack_from(frame)[0]
        if length + 4 != len(frame):
            raise RemoteProtocolError(
                f"frame length {length} disagrees with the {len(frame) - 4} bytes that follow "
                "it in the datagram (one frame per datagram, nothing after it)"
            )
    return Envelope(flags, conn, seq, ack, frame)


def decode_frame(frame: bytes, max_frame: int) -> Frame:
    """Decode the frame of an :class:`Envelope` (its length already checked against the
    datagram). ``max_frame`` bounds the length as on a stream; MSG may exceed it by
    :data:`~asyncipc.protocol.MSG_EXTRA`."""
    length = len(frame) - 4
    op = frame[4]
    if length > max_frame + (MSG_EXTRA if op == Op.MSG else 0):
        raise FrameTooLarge(f"frame length {length} exceeds the maximum frame size {max_frame}")
    return parse_frame(op, frame[5:])


def seq_after(a: int, b: int) -> bool:
    """``a`` comes after ``b`` in 32-bit serial-number arithmetic (RFC 1982): numbers wrap
    after 2**32 datagrams, so "after" means "less than half the circle ahead"."""
    d = (a - b) & _MASK
    return 0 < d < _HALF


class Arrival(IntEnum):
    """What :meth:`SequenceTracker.arrived` made of a sequence number."""

    NEXT = 0
    """In order (possibly after a gap, which was counted as lost)."""
    LATE = 1
    """Fills an earlier gap: arrived out of order; one fewer lost, one more reordered."""
    DUPLICATE = 2
    """Seen before, or too old to tell: drop it."""


class SequenceTracker:
    """Counts what a receiver can see of loss: gaps, late arrivals, duplicates.

    ``lost`` is the numbers skipped that have not (yet) arrived; a late arrival moves one
    from ``lost`` to ``reordered``. The numbers of the last ``memory`` gaps are kept to
    tell a late datagram from a duplicate; an older one counts as a duplicate.
    """

    __slots__ = ("_missing", "duplicates", "highest", "lost", "memory", "reordered")

    def __init__(self, memory: int = 4096) -> None:
        self.highest = 0
        """The highest number seen; the first datagram of a link is number 1."""
        self.lost = 0
        self.reordered = 0
        self.duplicates = 0
        self.memory = memory
        self._missing: OrderedDict[int, None] = OrderedDict()

    def arrived(self, seq: int) -> Arrival:
        """Account for a datagram carrying frame number ``seq``."""
        if seq_after(seq, self.highest):
            self.skip_to((seq - 1) & _MASK)
            self.highest = seq
            return Arrival.NEXT
        if seq in self._missing:
            del self._missing[seq]
            self.lost -= 1
            self.reordered += 1
            return Arrival.LATE
        self.duplicates += 1
        return Arrival.DUPLICATE

    def skip_to(self, seq: int) -> None:
        """Every number up to ``seq`` was sent (a control datagram says so): those not
        seen are lost, unless they turn up late."""
        if not seq_after(seq, self.highest):
            return
        gap = (seq - self.highest) & _MASK
        self.lost += gap
        missing = self._missing
        # Only the most recent ones are remembered: a huge jump costs no more than that.
        for back in range(min(gap, self.memory) - 1, -1, -1):
            missing[(seq - back) & _MASK] = None
        while len(missing) > self.memory:
            missing.popitem(last=False)
        self.highest = seq
