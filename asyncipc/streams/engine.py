"""A stream on the broker: capture, limits, deduplication, and its consumers.

Sans-network: a :class:`StreamEngine` stores what it is given in its
:class:`~asyncipc.streams.store.base.Log` and tells its consumers; the manager
(:mod:`.manager`) does the talking. Everything here runs on the event loop and never
blocks: the log does its file work off the loop.
"""

from __future__ import annotations

import asyncio
import time as _time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from ..errors import StreamError
from ..protocol.system import STREAM_MSG_ID_HEADER as MSG_ID_HEADER
from ..subjects import matches
from .config import PubAck, StreamConfig, StreamInfo
from .store.base import Log
from .store.memory import record_size

if TYPE_CHECKING:
    from .consumer import ConsumerEngine

__all__ = ["StreamEngine"]


class StreamEngine:
    """One stream: its log, its limits, its dedup window and its consumers."""

    def __init__(self, config: StreamConfig, log: Log, storage: str, created: float) -> None:
        self.config = config
        self.log = log
        self.storage = storage
        self.created = created
        self.consumers: dict[str, ConsumerEngine] = {}
        self.refused = 0
        self.closed = False
        # subject -> the live sequences on it, oldest first (per-subject limit, "last").
        self._by_subject: dict[str, deque[int]] = {}
        # msg_id -> (seq, time ns), oldest first: the deduplication window.
        self._dedup: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._age_timer: asyncio.TimerHandle | None = None
        self._captures: dict[str, bool] = {}
        for entry in log.entries():
            self._by_subject.setdefault(entry.subject, deque()).append(entry.seq)
        if config.max_age and log.messages:
            self._arm_age()  # records recovered from a store age from their own time

    async def rebuild_dedup(self, limit: int = 100_000) -> None:
        """After a restart: the ids of the records still within the deduplication window
        (the newest ``limit`` at most), read back from their ``asyncipc-msg-id`` header."""
        window = self.config.duplicate_window
        if not window or not self.log.messages:
            return
        since = self.log.seq_at_time(_time.time_ns() - int(window * 1e9))
        seqs = [e.seq for e in self.log.entries(since)][-limit:]
        for i in range(0, len(seqs), 1024):
            for msg in await self.log.read(seqs[i : i + 1024]):
                if msg is not None and msg.headers:
                    msg_id = msg.headers.get(MSG_ID_HEADER)
                    if msg_id is not None:
                        self._dedup[msg_id] = (msg.seq, msg.time)

    # --- what it captures ------------------------------------------------------------

    def captures(self, subject: str) -> bool:
        """Whether a message on ``subject`` belongs to this stream."""
        hit = self._captures.get(subject)
        if hit is None:
            if len(self._captures) >= 4096:
                self._captures.clear()
            hit = self._captures[subject] = any(
                matches(pattern, subject) for pattern in self.config.subjects
            )
        return hit

    # --- storing -----------------------------------------------------------------------

    def store(
        self,
        subject: str,
        headers: dict[str, str] | None,
        data: bytes,
        msg_id: str | None = None,
    ) -> PubAck:
        """Append one message, applying limits and dedup; the returned ack is valid once
        ``log.sync(ack.seq)`` returns. Raises :class:`StreamError` when refused."""
        if self.closed:
            raise StreamError("closed", f"stream {self.config.name} is closed")
        config = self.config
        now = _time.time_ns()
        if msg_id is not None:
            self._expire_dedup(now)
            seen = self._dedup.get(msg_id)
            if seen is not None:
                return PubAck(config.name, seen[0], True)
        size = record_size(subject, headers, data)
        if config.max_msg_size and len(data) > config.max_msg_size:
            self.refused += 1
            raise StreamError(
                "too-large",
                f"message of {len(data)} bytes is over stream {config.name}'s "
                f"max_msg_size of {config.max_msg_size}",
            )
        if config.max_bytes and size > config.max_bytes:
            # It can never fit: under discard="old" it would be acknowledged, then removed
            # at once with every other record.
            self.refused += 1
            raise StreamError(
                "too-large",
                f"a record of {size} bytes is over stream {config.name}'s "
                f"max_bytes of {config.max_bytes}",
            )
        log = self.log
        if config.discard == "new":
            why = None
            if config.max_msgs and log.messages + 1 > config.max_msgs:
                why = f"max_msgs ({config.max_msgs})"
            elif config.max_bytes and log.bytes + size > config.max_bytes:
                why = f"max_bytes ({config.max_bytes})"
            elif config.max_msgs_per_subject:
                held = self._by_subject.get(subject)
                if held is not None and len(held) >= config.max_msgs_per_subject:
                    why = f"max_msgs_per_subject ({config.max_msgs_per_subject}) on {subject!r}"
            if why is not None:
                self.refused += 1
                raise StreamError("limit", f"stream {config.name} is full: {why}")
        # A copy: over memory:// the publisher and the live subscribers hold this dict.
        seq = log.append(subject, dict(headers) if headers else None, data, now)
        held = self._by_subject.get(subject)
        if held is None:
            held = self._by_subject[subject] = deque()
        held.append(seq)
        if msg_id is not None and config.duplicate_window:
            self._dedup[msg_id] = (seq, now)
        if config.discard == "old":
            self._enforce(subject)
        if config.max_age and self._age_timer is None:
            self._arm_age()
        for consumer in self.consumers.values():
            consumer.stored(seq, subject)
        return PubAck(config.name, seq, False)

    def _enforce(self, subject: str) -> None:
        config = self.config
        log = self.log
        if config.max_msgs_per_subject:
            held = self._by_subject[subject]
            while len(held) > config.max_msgs_per_subject:
                log.delete(held.popleft())
        excess_msgs = log.messages - config.max_msgs if config.max_msgs else 0
        excess_bytes = log.bytes - config.max_bytes if config.max_bytes else 0
        if excess_msgs <= 0 and excess_bytes <= 0:
            return
        # Count from the index how far to go, then purge once (one record on disk).
        below = 0
        for entry in log.entries():
            if excess_msgs <= 0 and excess_bytes <= 0:
                break
            excess_msgs -= 1
            excess_bytes -= entry.size
            below = entry.seq + 1
            self._unindex(entry.subject, entry.seq)
        if below:
            log.purge(below)

    def _unindex(self, subject: str, seq: int) -> None:
        held = self._by_subject.get(subject)
        if not held:
            return
        if held[0] == seq:
            held.popleft()
        else:
            try:
                held.remove(seq)
            except ValueError:
                pass
        if not held:
            del self._by_subject[subject]

    def _expire_dedup(self, now: int) -> None:
        window = int(self.config.duplicate_window * 1e9)
        dedup = self._dedup
        while dedup:
            key, (_seq, when) = next(iter(dedup.items()))
            if now - when <= window:
                break
            del dedup[key]

    # --- age -----------------------------------------------------------------------------

    def _arm_age(self) -> None:
        first = self.log.entry(self.log.first_seq)
        if first is None:
            self._age_timer = None
            return
        due = first.time / 1e9 + self.config.max_age
        delay = max(0.0, due - _time.time()) + 0.01
        self._age_timer = asyncio.get_running_loop().call_later(delay, self._expire_age)

    def _expire_age(self) -> None:
        self._age_timer = None
        if self.closed:
            return
        cutoff = _time.time_ns() - int(self.config.max_age * 1e9)
        log = self.log
        below = log.seq_at_time(cutoff + 1)
        if below > log.first_seq:
            for entry in log.entries():
                if entry.seq >= below:
                    break
                self._unindex(entry.subject, entry.seq)
            log.purge(below)
        if log.messages:
            self._arm_age()

    # --- removing --------------------------------------------------------------------------

    def purge(self, subject: str | None = None) -> int:
        """Remove every record (or every record on subjects matching ``subject``)."""
        log = self.log
        if subject is None:
            gone = log.purge(log.last_seq + 1)
            self._by_subject.clear()
            return gone
        gone = 0
        for name in [s for s in self._by_subject if matches(subject, s)]:
            for seq in self._by_subject.pop(name):
                gone += log.delete(seq)
        return gone

    def forget_seq(self, seq: int) -> None:
        """A consumer-independent delete (``stream.delete_msg``)."""
        entry = self.log.entry(seq)
        if entry is None or not self.log.delete(seq):
            raise StreamError("not-found", f"stream {self.config.name} has no message {seq}")
        self._unindex(entry.subject, seq)

    # --- reading -------------------------------------------------------------------------

    def last_seq_for(self, pattern: str | None) -> list[int]:
        """The last live sequence of every subject matching ``pattern`` (all if None)."""
        out = [
            held[-1]
            for subject, held in self._by_subject.items()
            if held and (pattern is None or matches(pattern, subject))
        ]
        out.sort()
        return out

    def info(self) -> StreamInfo:
        log = self.log
        first = log.entry(log.first_seq)
        last = log.entry(log.last_seq)
        rec = log.recovery
        return StreamInfo(
            config=self.config,
            storage=self.storage,
            messages=log.messages,
            bytes=log.bytes,
            first_seq=log.first_seq,
            last_seq=log.last_seq,
            first_time_ns=first.time if first else 0,
            last_time_ns=last.time if last else 0,
            consumers=len(self.consumers),
            subjects=len(self._by_subject),
            refused=self.refused,
            lost=rec.lost,
            torn_bytes=rec.torn_bytes,
            created=self.created,
        )

    async def close(self) -> None:
        self.closed = True
        if self._age_timer is not None:
            self._age_timer.cancel()
            self._age_timer = None
        for consumer in self.consumers.values():
            consumer.close()
        await self.log.close()
