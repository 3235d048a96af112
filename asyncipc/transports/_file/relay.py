"""A broker's messages to and from the bus log every ``file://`` process of a directory shares.

:class:`FileRelay` is a :class:`~asyncipc.broker.Relay`: the broker hands it every message
published here (``outbound``, which never blocks: it queues), one writer task appends the
queue to the log in batches under the log's lock, and one tailer task waits for what any
process appended, reads it in batches and hands each record that another process wrote to
the broker (``relay_publish``), as if it had been published here.

Each record carries one header, :data:`META_HEADER`, that the receiving side strips:
which process wrote it (so that a process does not hear itself twice), the reply subject
of a request (the log keeps subject, headers and payload only), and for a stream
consumer's delivery to a worker in another process the subject it is delivered with
(``Broker.deliver_to`` put it in ``asyncipc-deliver-subject``; the tailer that finds a
subscriber of the inbox delivers it with that subject).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Protocol

from ...errors import AsyncIPCError
from ...protocol import Headers
from ...protocol.system import DELIVER_SUBJECT_HEADER, STREAM_PREFIX
from ...router import Router
from ...streams.store.base import IndexEntry, StoredMessage

__all__ = ["META_HEADER", "BusBroker", "FileRelay", "SharedLog"]

log = logging.getLogger("asyncipc.file")

META_HEADER = "asyncipc-file"
"""On every record of a bus log: ``"<origin> <reply> <deliver subject>"``, each part empty
when there is none. Subjects hold no spaces, so the split is exact. The origin ends in
:data:`HOST_MARK` when its process hosted the streams as it wrote the record: such a record
was captured by the streams when it was published, and a new host catching up with the
log (:meth:`FileRelay.catch_up`) must not capture it again."""
HOST_MARK = "!"

BATCH_MSGS = 4096
"""Records appended in one trip to the log at most (one lock, one write)."""
BATCH_BYTES = 4 << 20
READ_BATCH = 512
"""Records read in one trip off the event loop by the tailer."""
MAX_QUEUED = 64 << 20
"""Payload bytes waiting for the writer at most. Past it a message is dropped and counted:
``outbound`` must not block the broker, and a plain publish is at most once anyway."""
BACKLOG_POLL = 0.005
"""Seconds between two looks at a backlog that stopped the tailer."""
RETENTION_EVERY = 1.0
"""Seconds between two checks of the bus log's ``max_bytes``/``max_age``."""

_SKIP = ("$", "_INBOX.")  # subjects no stream captures
_Item = tuple[str, dict[str, str] | None, bytes, int]


class SharedLog(Protocol):
    """What the relay needs of the bus log: a ``FileLog`` opened with ``shared=True``."""

    @property
    def first_seq(self) -> int: ...

    @property
    def last_seq(self) -> int: ...

    @property
    def bytes(self) -> int: ...

    def entries(self, start: int = 0) -> Iterator[IndexEntry]: ...

    def seq_at_time(self, time: int) -> int: ...

    def purge(self, below: int) -> int: ...

    async def append_batch(self, items: list[_Item]) -> list[int]: ...

    async def refresh(self) -> list[IndexEntry]: ...

    async def wait_changed(self, timeout: float) -> None: ...

    async def read(self, seqs: Sequence[int]) -> list[StoredMessage | None]: ...


class BusBroker(Protocol):
    """What the relay needs of its broker (:class:`asyncipc.Broker` is one)."""

    @property
    def router(self) -> Router[Any]: ...

    @property
    def buffered(self) -> int: ...

    def relay_publish(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None: ...

    def relay_stream_request(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None: ...

    def deliver_to(
        self, inbox: str, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> bool: ...


class FileRelay:
    """One broker's side of a bus log. See the module docstring.

    ``origin`` names this relay in the records it writes (unique per process and
    directory). ``max_bytes``/``max_age`` (0: none) bound the log; every process checks
    after its own appends and removes whole segments (``log.purge``). While the broker
    holds more than ``backlog`` bytes for subscribers that do not keep up (``block``
    subscriptions), the tailer stops reading: the backlog waits in the log, on disk,
    and nothing in this process grows.
    """

    def __init__(
        self,
        broker: BusBroker,
        bus_log: SharedLog,
        origin: str,
        *,
        max_bytes: int = 0,
        max_age: float = 0.0,
        backlog: int = 1 << 20,
    ) -> None:
        self.broker = broker
        self.log = bus_log
        self.origin = origin
        self._marked = origin + HOST_MARK
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.backlog = backlog
        self.hosting = False
        """True while this process hosts the streams: it answers the ``$sys.stream.``
        requests in the log, and its broker captures every message it sees."""
        self.turn = asyncio.Lock()
        """Held by the tailer while it hands records over: whoever takes it (the process
        becoming the streams' host) has the log stand still."""
        self.appended = 0
        """Records this relay wrote."""
        self.received = 0
        """Records of other processes handed to the broker."""
        self.dropped = 0
        """Messages not written: the queue was full, the relay closed, or a write failed."""
        self.missed = 0
        """Records trimmed from the log (``max_bytes``/``max_age``) before this process
        read them: its tailer had fallen that far behind."""
        self._queue: list[_Item] = []
        self._queued = 0
        self._writing = 0  # records in the batch being appended
        self._wake = asyncio.Event()
        self._flushed = asyncio.Event()
        self._flushed.set()
        self._closed = False
        self._delivering = False
        # Sequences we appended that the tailer has not passed: it skips them unread.
        self._own: set[int] = set()
        self._tailed = bus_log.last_seq  # a new process tails from the end: live only
        self._next_retention = 0.0
        self._warned = 0.0

    # --- the broker's side (Relay) ---------------------------------------------------

    def wants(self, subject: str) -> bool:
        """Every subject, but a reply subject a subscription of this process takes: a
        request's answer to a requester here need not travel through the disk."""
        return not (subject.startswith("_INBOX.") and self.broker.router.route(subject))

    def outbound(
        self, subject: str, data: bytes, reply: str | None, headers: Headers | None
    ) -> None:
        """Queue a message for the writer; never blocks."""
        deliver = ""
        if headers:
            fields = dict(headers)
            if DELIVER_SUBJECT_HEADER in fields:
                if self._delivering:
                    # A delivery the tailer is making found no subscriber here: the
                    # worker is in yet another process, which reads the same record.
                    return
                deliver = fields.pop(DELIVER_SUBJECT_HEADER)
        else:
            fields = {}
        if self._closed or self._queued + len(data) > MAX_QUEUED:
            self._drop(subject)
            return
        mark = HOST_MARK if self.hosting else ""
        fields[META_HEADER] = f"{self.origin}{mark} {reply or ''} {deliver}"
        self._queue.append((subject, fields, data, time.time_ns()))
        self._queued += len(data)
        self._flushed.clear()
        self._wake.set()

    def _drop(self, subject: str) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._warned >= 1.0:
            self._warned = now
            why = "closed" if self._closed else f"over {MAX_QUEUED >> 20} MiB behind"
            log.warning(
                "file bus: dropped a message on %s (the log writer is %s); %d dropped so far",
                subject,
                why,
                self.dropped,
            )

    # --- the writer ------------------------------------------------------------------

    async def run_writer(self) -> None:
        """Append what ``outbound`` queued, in batches, until cancelled."""
        while True:
            if not self._queue:
                self._flushed.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            self._writing = len(batch)
            try:
                seqs = await self._append(batch)
            except (AsyncIPCError, OSError) as exc:
                self.dropped += len(batch)
                log.error("file bus: %d messages not written to the log: %s", len(batch), exc)
                await asyncio.sleep(0.1)  # a full disk does not become a busy loop
                continue
            finally:
                self._writing = 0
            self.appended += len(seqs)
            tailed = self._tailed
            self._own.update(s for s in seqs if s > tailed)
            self._retain()

    async def _append(self, batch: list[_Item]) -> list[int]:
        try:
            return await self.log.append_batch(batch)
        except ValueError:
            pass  # one message the log cannot hold (a subject or headers too large)
        seqs: list[int] = []
        for item in batch:
            try:
                seqs += await self.log.append_batch([item])
            except ValueError as exc:
                self.dropped += 1
                log.error("file bus: a message on %s cannot be written: %s", item[0], exc)
        return seqs

    def _take(self) -> list[_Item]:
        queue = self._queue
        n = 0
        size = 0
        while n < len(queue) and n < BATCH_MSGS and size < BATCH_BYTES:
            size += len(queue[n][2])
            n += 1
        batch = queue[:n]
        del queue[:n]
        self._queued -= size
        return batch

    async def flush(self) -> None:
        """Return when everything queued so far is in the log (or was dropped)."""
        while self._queue or self._writing:
            await self._flushed.wait()
            if self._queue or self._writing:
                await asyncio.sleep(0)

    def close(self) -> None:
        """Take no more messages (call :meth:`flush` first to keep the queued ones)."""
        self._closed = True

    def _retain(self) -> None:
        if not (self.max_bytes or self.max_age):
            return
        now = time.monotonic()
        if now < self._next_retention:
            return
        self._next_retention = now + RETENTION_EVERY
        bus_log = self.log
        below = bus_log.first_seq
        if self.max_age:
            below = bus_log.seq_at_time(time.time_ns() - int(self.max_age * 1e9))
        if self.max_bytes and bus_log.bytes > self.max_bytes:
            # Down to 3/4 of the bound, so that a full log is not trimmed on every batch.
            excess = bus_log.bytes - self.max_bytes * 3 // 4
            for entry in bus_log.entries():
                if excess <= 0:
                    break
                excess -= entry.size
                below = max(below, entry.seq + 1)
        if below > bus_log.first_seq:
            try:
                bus_log.purge(below)
            except (AsyncIPCError, OSError) as exc:
                log.error("file bus: could not trim the log: %s", exc)

    # --- the tailer ------------------------------------------------------------------

    @property
    def tailed(self) -> int:
        """The last sequence of the log the tailer has passed: every record up to it that
        another process wrote was handed to the broker (and, in the streams' host,
        captured)."""
        return self._tailed

    async def run_tailer(self) -> None:
        """Hand the broker what other processes append, until cancelled."""
        broker = self.broker
        while True:
            if broker.buffered > self.backlog:
                await asyncio.sleep(BACKLOG_POLL)  # a slow subscriber: let the log hold it
                continue
            async with self.turn:
                moved = await self._tail_once()
            if not moved:
                await self.log.wait_changed(1.0)

    async def _tail_once(self) -> bool:
        bus_log = self.log
        try:
            new = await bus_log.refresh()
        except (AsyncIPCError, OSError) as exc:
            log.error("file bus: cannot read the log: %s", exc)
            await asyncio.sleep(1.0)
            return True
        if new:
            gap = new[0].seq - self._tailed - 1
            if gap > 0 and self._tailed:
                self.missed += gap
                log.warning(
                    "file bus: %d records were trimmed from the log before this process "
                    "read them (it fell behind by more than max_bytes/max_age)",
                    gap,
                )
            own = self._own
            wanted: list[int] = []
            for entry in new:
                if entry.seq in own:
                    own.discard(entry.seq)
                elif entry.seq > self._tailed:
                    wanted.append(entry.seq)
            self._tailed = max(self._tailed, new[-1].seq)
            if len(own) > 1 << 16:  # sequences trimmed before the tailer saw them
                self._own = {s for s in own if s > self._tailed}
            async for msg in self._records(wanted):
                self._inbound(msg)
        return bool(new)

    async def _records(self, seqs: list[int]) -> AsyncIterator[StoredMessage]:
        for i in range(0, len(seqs), READ_BATCH):
            chunk = seqs[i : i + READ_BATCH]
            try:
                found = await self.log.read(chunk)
            except (AsyncIPCError, OSError) as exc:
                log.error(
                    "file bus: records %d..%d unreadable, skipped: %s", chunk[0], chunk[-1], exc
                )
                continue
            for msg in found:
                if msg is not None:
                    yield msg

    async def catch_up(
        self, since: int, capture: Callable[[str, bytes, Headers | None], None]
    ) -> int:
        """Hand ``capture`` every plain message of the log after ``since`` and up to
        :attr:`tailed` that no streams' host captured when it was published: what a new
        host owes the streams (published while no process hosted them, or after the old
        host's tailer stopped). Call it holding :attr:`turn`. Returns how many."""
        wanted = [e.seq for e in self.log.entries(since + 1) if e.seq <= self._tailed]
        n = 0
        async for msg in self._records(wanted):
            headers = dict(msg.headers) if msg.headers else {}
            origin, _, rest = headers.pop(META_HEADER, "").partition(" ")
            subject = msg.subject
            if origin.endswith(HOST_MARK) or rest.partition(" ")[2] or subject.startswith(_SKIP):
                continue  # captured already, a consumer's delivery, or not for streams
            capture(subject, msg.data, headers or None)
            n += 1
        return n

    def _inbound(self, msg: StoredMessage) -> None:
        headers = dict(msg.headers) if msg.headers else {}
        meta = headers.pop(META_HEADER, "")
        origin, _, rest = meta.partition(" ")
        if origin == self.origin or origin == self._marked:
            return
        reply, _, deliver = rest.partition(" ")
        subject = msg.subject
        broker = self.broker
        self.received += 1
        try:
            if deliver:
                self._delivering = True
                try:
                    broker.deliver_to(subject, deliver, msg.data, reply or None, headers or None)
                finally:
                    self._delivering = False
            elif subject.startswith("$"):
                if self.hosting and subject.startswith(STREAM_PREFIX):
                    broker.relay_stream_request(subject, msg.data, reply or None, headers or None)
            else:
                broker.relay_publish(subject, msg.data, reply or None, headers or None)
        except Exception:
            # One bad record must not stop the bus for everyone after it.
            log.exception("file bus: record %d on %r could not be delivered", msg.seq, subject)
