"""What a stream's storage engine offers the stream engine above it.

Two engines implement :class:`Log`: :class:`~asyncipc.streams.store.memory.MemoryLog`
(streams without a store) and :class:`~asyncipc.streams.store.filelog.FileLog` (segment
files under ``--store DIR``, and the ``file://`` bus). The stream engine
(:mod:`asyncipc.streams.engine`) never knows which one it holds.

Sequence numbers start at 1 and are never reused, even after the records they named
were deleted. The index every engine keeps in memory (sequence, subject, time, size) lets
the engine answer limits, per-subject and by-time questions with no I/O; only payloads
may need a read (:meth:`Log.read`), which never blocks the event loop.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "FsyncPolicy",
    "IndexEntry",
    "Log",
    "LostSegment",
    "RecoveryReport",
    "StoredMessage",
]

FsyncPolicy = Literal["always", "interval", "never"]
"""``"always"``: :meth:`Log.sync` returns only after an fsync that covers the record
(concurrent appends share one fsync). ``"interval"``: every ``sync_interval`` seconds.
``"never"``: the operating system decides."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One stored message: what was published, its sequence and its time (ns since epoch)."""

    seq: int
    time: int
    subject: str
    headers: dict[str, str] | None
    data: bytes


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What the in-memory index knows of a live record, without reading it."""

    seq: int
    time: int
    subject: str
    size: int
    """Bytes the record counts against ``max_bytes``: subject + headers + payload."""


@dataclass(frozen=True, slots=True)
class LostSegment:
    """A segment file recovery could not read past, and what was lost with it."""

    name: str
    reason: str
    lost: int
    """Records that were in it and are gone (0 if none could be counted)."""


@dataclass(slots=True)
class RecoveryReport:
    """What opening a log found: a torn tail cut off, corrupt segments skipped."""

    recovered: int = 0
    torn_bytes: int = 0
    lost_segments: list[LostSegment] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.lost_segments)


class Log(Protocol):
    """An append-only log of messages with deletes, one per stream."""

    @property
    def durable(self) -> bool:
        """True when records survive the process (a file store)."""
        ...

    @property
    def first_seq(self) -> int:
        """The lowest live sequence; ``last_seq + 1`` when the log is empty."""
        ...

    @property
    def last_seq(self) -> int:
        """The highest sequence ever assigned (0 for a log never written)."""
        ...

    @property
    def messages(self) -> int:
        """Live records."""
        ...

    @property
    def bytes(self) -> int:
        """The sum of the live records' :attr:`IndexEntry.size`."""
        ...

    @property
    def recovery(self) -> RecoveryReport:
        """What opening found."""
        ...

    def append(
        self, subject: str, headers: dict[str, str] | None, data: builtins.bytes, time: int
    ) -> int:
        """Queue a record; its sequence is returned at once (in order of the calls).

        Never blocks: the write happens off the event loop. Await :meth:`sync` for it to
        be durable under the fsync policy. Raises :class:`~asyncipc.StoreError` when the
        log has failed or is closed."""
        ...

    async def sync(self, seq: int) -> None:
        """Return when ``seq`` (and everything before it) is written and, under
        ``"always"``, fsynced. Raises :class:`~asyncipc.StoreError` if writing failed."""
        ...

    def delete(self, seq: int) -> bool:
        """Remove one live record (made durable like an append). False if not live."""
        ...

    def purge(self, below: int) -> int:
        """Remove every record with a sequence below ``below``; how many went."""
        ...

    def entry(self, seq: int) -> IndexEntry | None:
        """The index entry of a live record, or None. No I/O."""
        ...

    def entries(self, start: int = 0) -> Iterator[IndexEntry]:
        """Live records with sequence >= ``start``, in order. No I/O."""
        ...

    def seq_at_time(self, time: int) -> int:
        """The first live sequence whose time is >= ``time`` (``last_seq + 1`` if none)."""
        ...

    def cached(self, seq: int) -> StoredMessage | None:
        """The record if it is in memory (recent appends), else None. No I/O."""
        ...

    async def read(self, seqs: Sequence[int]) -> list[StoredMessage | None]:
        """The records, None for those not live. One trip off the loop for the batch."""
        ...

    async def close(self) -> None:
        """Write and sync what is queued, then release the files."""
        ...
