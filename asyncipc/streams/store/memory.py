"""``MemoryLog``: a stream's records in this process's memory.

The store of a broker started without ``--store`` (and of the embedded ``memory://``
broker). Nothing survives the process; :attr:`MemoryLog.durable` says so, and
``stream.info()`` reports ``storage="memory"``.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence

from ...errors import StoreError
from .base import IndexEntry, RecoveryReport, StoredMessage

__all__ = ["MemoryLog", "record_size"]


def record_size(subject: str, headers: dict[str, str] | None, data: bytes) -> int:
    """What a record counts against ``max_bytes``: subject, headers and payload."""
    size = len(subject) + len(data)
    if headers:
        for key, value in headers.items():
            size += len(key) + len(value) + 2
    return size


class MemoryLog:
    """The :class:`~asyncipc.streams.store.base.Log` of a stream kept in memory.

    Records live in a list indexed by ``seq - base``; deleted ones leave a ``None`` so
    that lookups stay O(1), and the list is trimmed from the front as the oldest go.
    """

    durable = False

    def __init__(self) -> None:
        self._records: list[StoredMessage | None] = []
        self._sizes: list[int] = []
        self._base = 1  # the sequence of _records[0]
        self._last = 0
        self._messages = 0
        self._bytes = 0
        self._closed = False
        self._recovery = RecoveryReport()

    @property
    def first_seq(self) -> int:
        return self._base if self._messages else self._last + 1

    @property
    def last_seq(self) -> int:
        return self._last

    @property
    def messages(self) -> int:
        return self._messages

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def recovery(self) -> RecoveryReport:
        return self._recovery

    def append(
        self, subject: str, headers: dict[str, str] | None, data: builtins.bytes, time: int
    ) -> int:
        if self._closed:
            raise StoreError("the stream's log is closed")
        if self._records:
            prev = self._records[-1]
            if prev is not None and time < prev.time:
                time = prev.time  # times never go backwards: seq_at_time bisects them
        self._last += 1
        seq = self._last
        if not self._records:
            self._base = seq
        size = record_size(subject, headers, data)
        self._records.append(StoredMessage(seq, time, subject, headers, data))
        self._sizes.append(size)
        self._messages += 1
        self._bytes += size
        return seq

    async def sync(self, seq: int) -> None:
        if self._closed:
            raise StoreError("the stream's log is closed")

    def delete(self, seq: int) -> bool:
        i = seq - self._base
        if i < 0 or i >= len(self._records) or self._records[i] is None:
            return False
        self._records[i] = None
        self._messages -= 1
        self._bytes -= self._sizes[i]
        self._trim()
        return True

    def purge(self, below: int) -> int:
        n = min(below - self._base, len(self._records))
        if n <= 0:
            return 0
        gone = 0
        for i in range(n):
            if self._records[i] is not None:
                gone += 1
                self._bytes -= self._sizes[i]
        del self._records[:n]
        del self._sizes[:n]
        self._base += n
        self._messages -= gone
        self._trim()
        return gone

    def _trim(self) -> None:
        records = self._records
        n = 0
        while n < len(records) and records[n] is None:
            n += 1
        if n:
            del records[:n]
            del self._sizes[:n]
            self._base += n
        if not records:
            self._base = self._last + 1

    def entry(self, seq: int) -> IndexEntry | None:
        i = seq - self._base
        if i < 0 or i >= len(self._records):
            return None
        rec = self._records[i]
        if rec is None:
            return None
        return IndexEntry(rec.seq, rec.time, rec.subject, self._sizes[i])

    def entries(self, start: int = 0) -> Iterator[IndexEntry]:
        i = max(0, start - self._base)
        while i < len(self._records):
            rec = self._records[i]
            if rec is not None:
                yield IndexEntry(rec.seq, rec.time, rec.subject, self._sizes[i])
            i += 1

    def seq_at_time(self, time: int) -> int:
        records = self._records
        lo, hi = 0, len(records)
        # Bisect over the live records' times (deleted slots borrow their neighbour's).
        while lo < hi:
            mid = (lo + hi) // 2
            j = mid
            while j < hi and records[j] is None:
                j += 1
            if j == hi:
                hi = mid
                continue
            rec = records[j]
            assert rec is not None
            if rec.time < time:
                lo = j + 1
            else:
                hi = mid
        while lo < len(records) and records[lo] is None:
            lo += 1
        return self._base + lo if lo < len(records) else self._last + 1

    def cached(self, seq: int) -> StoredMessage | None:
        i = seq - self._base
        if 0 <= i < len(self._records):
            return self._records[i]
        return None

    async def read(self, seqs: Sequence[int]) -> list[StoredMessage | None]:
        return [self.cached(seq) for seq in seqs]

    async def close(self) -> None:
        self._closed = True
