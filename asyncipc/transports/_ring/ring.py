"""Single-producer, single-consumer rings of variable-size records over any writable buffer.

Pure logic: no file descriptor, no event loop, no mapping. The same code runs over a
``bytearray`` in the unit tests, over a shared ``memfd`` (``shm://``) and over a mapped
file (``mmap://``). ``docs/shm.md`` draws the layout and argues why a record becomes
visible to the reader only once it is complete; the short version:

* The **writer** owns ``tail``, the **reader** owns ``head``: two byte counters that only
  grow, each on its own 64-byte cache line. ``tail - head`` bytes are in use.
* A record is a 16-byte header (length, payload CRC, position tag, kind, flags, header
  check) followed by its payload, padded to 16 bytes. The writer copies the payload,
  then the header, and only then moves ``tail`` past the record: moving ``tail`` is the
  commit. A writer that dies before that leaves nothing the reader will ever look at.
* A record never wraps. When it does not fit before the end, the rest of the ring gets a
  *pad* record (committed on its own) and the record starts again at offset 0, so every
  record is one contiguous slice: that is what makes a zero-copy view possible.
* The reader checks every header: the tag must be the record's own position (a header
  left from an earlier lap is caught), the header check must match, the length must stay
  inside the ring and below ``tail``, and, when the ring was made with checksums, the
  payload's CRC-32 must match. A record that fails raises :class:`CorruptRing` naming
  what was wrong; :meth:`RingReader.skip_corrupt` steps over it (``mmap://`` recovery).
* A record larger than the ring is refused with :class:`FrameTooLarge`; the links above
  carry bigger frames in pieces (``FLAG_MORE``), the ring itself never splits a record.
"""

from __future__ import annotations

import struct
import sys
import zlib
from collections.abc import Sequence
from typing import Any, Final

from ...errors import CorruptRing, FrameTooLarge
from .record import Record, RecordView

__all__ = [
    "ALIGN",
    "DATA_OFFSET",
    "FLAG_FIN",
    "FLAG_MORE",
    "HEADER_SIZE",
    "KIND_DATA",
    "KIND_PAD",
    "MIN_CAPACITY",
    "RECORD",
    "RECORD_HEADER",
    "Record",
    "RecordView",
    "RingReader",
    "RingWriter",
    "format_ring",
    "header_check",
    "record_size",
    "ring_size",
]

# Final: mypyc (the accelerated build) inlines them, instead of a module dict lookup
# per use on the per-record path.
MAGIC: Final = b"AIPCRNG1"
VERSION: Final = 1

# --- the ring header: 512 bytes, one concern per 64-byte cache line -----------------
HEADER_SIZE: Final = 512
DATA_OFFSET: Final = HEADER_SIZE
_META: Final = struct.Struct("<8sIIQ")  # line 0, written once: magic, version, ring flags, capacity
TAIL: Final = 64  # line 1: u64, written by the writer on every commit
HEAD: Final = 128  # line 2: u64, written by the reader as it consumes
READER_SLEEP: Final = 192  # line 3: u32 counter, odd while the reader sleeps (reader-written)
WRITER_WAIT: Final = 256  # line 4: u32 counter, odd while the writer waits for space (writer)
RING_CHECKSUM: Final = 1  # ring flag: every record carries the CRC-32 of its payload

# The shared words are read and written through memoryviews cast to "Q" / "I", never with
# struct.pack_into: pack_into zeroes its target before it writes the value (CPython's
# s_pack_internal memsets first), so a peer reading at that moment sees 0. A cast view's
# item assignment is one fixed-size memcpy: one aligned store (docs/shm.md).
_TAIL_Q: Final = TAIL // 8
_HEAD_Q: Final = HEAD // 8
_SLEEP_I: Final = READER_SLEEP // 4
_WAIT_I: Final = WRITER_WAIT // 4

# --- records ---------------------------------------------------------------------------
RECORD: Final = struct.Struct("<IIIBBH")  # length, payload crc, tag, kind, flags, header check
RECORD_HEADER: Final = 16
assert RECORD.size == RECORD_HEADER
ALIGN: Final = 16  # records start on 16-byte boundaries, so a gap at the end always fits a pad
KIND_DATA: Final = 1
KIND_PAD: Final = 2
FLAG_MORE: Final = 1  # (link level) the payload continues in the next record
FLAG_FIN: Final = 2  # (link level) the writer closed: nothing follows

MIN_CAPACITY: Final = 4096
MAX_CAPACITY: Final = 1 << 40


def ring_size(capacity: int) -> int:
    """Bytes a ring of ``capacity`` data bytes occupies, header included."""
    return HEADER_SIZE + capacity


def record_size(length: int) -> int:
    """Ring bytes a record with a payload of ``length`` bytes takes, header and padding."""
    return (RECORD_HEADER + length + ALIGN - 1) & -ALIGN


def header_check(length: int, crc: int, tag: int, kind: int, flags: int) -> int:
    """The 16-bit check over a record header's other fields: a header whose fields were
    not all written (or are garbage) fails it, whatever its payload checksum mode."""
    h = (length * 0x9E3779B1 + crc * 0x85EBCA77 + tag * 0xC2B2AE3D + (kind << 8 | flags)) & (
        0xFFFFFFFF
    )
    return (h ^ (h >> 16)) & 0xFFFF


def _tag(position: int) -> int:
    return (position >> 4) & 0xFFFFFFFF


def _writable_view(buf: Any) -> memoryview:
    mv = memoryview(buf)
    if mv.readonly:
        mv.release()
        raise ValueError("a ring needs a writable buffer (bytearray, mmap, ...)")
    if mv.ndim != 1 or mv.itemsize != 1 or not mv.c_contiguous:
        flat = mv.cast("B")
        mv.release()
        mv = flat
    return mv


def format_ring(buf: Any, capacity: int, *, offset: int = 0, checksum: bool = False) -> None:
    """Write an empty ring of ``capacity`` data bytes into ``buf`` at ``offset``.

    ``capacity`` is a multiple of 16 of at least 4096. With ``checksum`` every record
    carries the CRC-32 of its payload (``mmap://`` always; see ``docs/shm.md``).
    """
    if capacity % ALIGN or not MIN_CAPACITY <= capacity <= MAX_CAPACITY:
        raise ValueError(
            f"ring capacity {capacity} must be a multiple of {ALIGN} between "
            f"{MIN_CAPACITY} and {MAX_CAPACITY}"
        )
    mv = _writable_view(buf)
    try:
        if offset < 0 or offset % 64 or len(mv) < offset + ring_size(capacity):
            raise ValueError(
                f"a ring of {capacity} bytes at offset {offset} needs {ring_size(capacity)} "
                f"bytes on a 64-byte boundary; the buffer has {len(mv)}"
            )
        mv[offset : offset + HEADER_SIZE] = bytes(HEADER_SIZE)
        flags = RING_CHECKSUM if checksum else 0
        _META.pack_into(mv, offset, MAGIC, VERSION, flags, capacity)
    finally:
        mv.release()


class _RingEnd:
    """What both ends share: the validated header and the buffer view."""

    __slots__ = ("_base", "_data", "_i", "_mv", "_q", "capacity", "checksum")

    def __init__(self, buf: Any, offset: int = 0) -> None:
        mv = _writable_view(buf)
        try:
            if offset < 0 or offset % 64 or len(mv) < offset + HEADER_SIZE:
                raise CorruptRing(
                    f"no room for a ring header at offset {offset} of a {len(mv)}-byte buffer"
                    " (on a 64-byte boundary)"
                )
            if sys.byteorder != "little":  # pragma: no cover - x86-64 and AArch64 only
                raise CorruptRing("rings are little-endian; this machine is not")
            magic, version, flags, capacity = _META.unpack_from(mv, offset)
            if magic != MAGIC:
                raise CorruptRing(
                    f"ring header at offset {offset}: bad magic {magic!r} "
                    f"(expected {MAGIC!r}; not an asyncipc ring)"
                )
            if version != VERSION:
                raise CorruptRing(
                    f"ring header at offset {offset}: layout version {version}, "
                    f"this code reads version {VERSION}"
                )
            if flags & ~RING_CHECKSUM:
                raise CorruptRing(f"ring header at offset {offset}: unknown flags {flags:#x}")
            if capacity % ALIGN or not MIN_CAPACITY <= capacity <= MAX_CAPACITY:
                raise CorruptRing(f"ring header at offset {offset}: bad capacity {capacity}")
            if len(mv) < offset + ring_size(capacity):
                raise CorruptRing(
                    f"ring header at offset {offset} claims {capacity} data bytes, but only "
                    f"{len(mv) - offset - HEADER_SIZE} follow it in the buffer"
                )
        except BaseException:
            mv.release()
            raise
        self._mv = mv
        header = mv[offset : offset + HEADER_SIZE]
        self._q = header.cast("Q")  # the shared words, one aligned load/store each
        self._i = header.cast("I")
        header.release()
        self._base = offset
        self._data = offset + DATA_OFFSET
        self.capacity: int = capacity
        self.checksum: bool = bool(flags & RING_CHECKSUM)

    def _load_counters(self) -> tuple[int, int]:
        head: int = self._q[_HEAD_Q]
        tail: int = self._q[_TAIL_Q]
        if head > tail or tail - head > self.capacity or head % ALIGN or tail % ALIGN:
            raise CorruptRing(
                f"ring counters out of range: head {head}, tail {tail}, capacity {self.capacity}"
            )
        return head, tail

    @property
    def buffer(self) -> memoryview:
        """The whole buffer the ring lives in, as flat bytes: the offsets
        :meth:`RingReader.next_record` returns index it.

        Package-internal: a link or channel takes it once, at set-up, to read records in
        place without a call per record. It is released by :meth:`close`, after which any
        use of it raises ``ValueError``.
        """
        return self._mv

    @property
    def used(self) -> int:
        """Bytes between the reader's and the writer's position, as the header says now."""
        head, tail = self._load_counters()
        return tail - head

    def close(self) -> None:
        """Drop this end's views of the buffer (the buffer itself is the caller's)."""
        self._q.release()
        self._i.release()
        self._mv.release()


class RingWriter(_RingEnd):
    """The one writer of a ring. Appends records; never blocks (``try_*`` says no).

    ``tail`` is the writer's position: the bytes it ever committed (records and pads), the
    value it publishes in the ring header. Read-only outside this class; the links compare
    it before and after a write to know whether anything was committed (a pad committed
    alone too), so that they ring the reader's doorbell exactly then. It is an attribute,
    not a property, because that comparison is on every record's path.
    """

    __slots__ = ("_head_seen", "_wait_seq", "max_payload", "tail")

    def __init__(self, buf: Any, offset: int = 0) -> None:
        super().__init__(buf, offset)
        try:
            head, tail = self._load_counters()
        except BaseException:
            self.close()
            raise
        # A writer that restarts continues after the last committed record: ``tail``.
        self.tail = tail
        self._head_seen = head
        self._wait_seq: int = self._i[_WAIT_I]
        self.max_payload: int = self.capacity - RECORD_HEADER

    def _room(self, size: int) -> bool:
        if self.tail + size - self._head_seen <= self.capacity:
            return True
        head: int = self._q[_HEAD_Q]
        if head > self.tail or head < self.tail - self.capacity or head % ALIGN:
            raise CorruptRing(
                f"the reader's head {head} is out of range "
                f"(tail {self.tail}, capacity {self.capacity})"
            )
        self._head_seen = head
        return self.tail + size - head <= self.capacity

    @property
    def free(self) -> int:
        """Bytes free now (a record needs :func:`record_size` of them, plus any pad)."""
        self._room(self.capacity + 1)  # refreshes the reader's position
        return self.capacity - (self.tail - self._head_seen)

    def try_write(self, payload: Any, flags: int = 0) -> bool:
        """Append one record; False if the ring has no room for it now."""
        return self.try_write_parts((payload,), len(payload), flags)

    def try_write_parts(self, parts: Sequence[Any], length: int, flags: int = 0) -> bool:
        """Append one record whose payload is ``parts`` (bytes-like, ``length`` bytes in
        all) without joining them first: each part is copied once, into the ring."""
        # The hot path of every ring link: record_size() and header_check() inlined.
        size = (length + RECORD_HEADER + ALIGN - 1) & -ALIGN
        cap = self.capacity
        tail = self.tail
        off = tail % cap
        if size > cap - off:
            if size > cap:
                raise FrameTooLarge(
                    f"record of {length} bytes does not fit a ring of {cap} bytes "
                    f"(at most {self.max_payload})"
                )
            if not self._pad(tail, off):
                return False
            tail = self.tail
            off = 0
        if tail + size - self._head_seen > cap and not self._room(size):
            return False
        mv = self._mv
        at = self._data + off
        pos = at + RECORD_HEADER
        crc = 0
        if self.checksum:
            for part in parts:
                n = len(part)
                mv[pos : pos + n] = part
                pos += n
                crc = zlib.crc32(part, crc)
        else:
            for part in parts:
                n = len(part)
                mv[pos : pos + n] = part
                pos += n
        if pos - at - RECORD_HEADER != length:
            raise ValueError(f"parts hold {pos - at - RECORD_HEADER} bytes, not {length}")
        tag = (tail >> 4) & 0xFFFFFFFF
        h = (length * 0x9E3779B1 + crc * 0x85EBCA77 + tag * 0xC2B2AE3D + (256 | flags)) & (
            0xFFFFFFFF
        )
        # Order matters (docs/shm.md): payload, then header, then the tail that commits.
        RECORD.pack_into(mv, at, length, crc, tag, KIND_DATA, flags, (h ^ (h >> 16)) & 0xFFFF)
        self.tail = tail = tail + size
        self._q[_TAIL_Q] = tail
        return True

    def _pad(self, tail: int, off: int) -> bool:
        """Fill the end of the ring with a pad and commit it alone: waiting for room for
        pad and record together could wait forever for a record bigger than what is
        left. False if even the pad does not fit yet."""
        room = self.capacity - off
        if not self._room(room):
            return False
        length = room - RECORD_HEADER
        tag = _tag(tail)
        check = header_check(length, 0, tag, KIND_PAD, 0)
        RECORD.pack_into(self._mv, self._data + off, length, 0, tag, KIND_PAD, 0, check)
        self.tail = tail + room
        self._q[_TAIL_Q] = tail + room
        return True

    @property
    def reader_sleep(self) -> int:
        """The reader's sleep counter: odd once it said it is going to sleep, so a new
        record must ring its doorbell. Each sleep has its own value: one ring per sleep."""
        seq: int = self._i[_SLEEP_I]
        return seq

    @property
    def reader_sleeping(self) -> bool:
        return bool(self.reader_sleep & 1)

    def set_waiting(self, waiting: bool) -> None:
        """Tell the reader that this writer waits for space (it rings when it frees some)."""
        seq = self._wait_seq
        if bool(seq & 1) != waiting:
            self._wait_seq = seq = (seq + 1) & 0xFFFFFFFF
            self._i[_WAIT_I] = seq


class RingReader(_RingEnd):
    """The one reader of a ring: records in order, in place or copied.

    :meth:`read`, :meth:`read_bytes` and :meth:`skip_corrupt` are the safe API. The links
    read with :meth:`next_record` and :meth:`consume` instead (package-internal): the
    record's bytes in :attr:`buffer`, with no :class:`Record` made per record. ``head`` is
    the reader's position, the bytes it ever consumed (the value it publishes in the ring
    header); read-only outside this class, an attribute for the same reason as
    ``RingWriter.tail``: a link compares it around a read to know whether space was freed
    (a pad consumed alone too) and the writer may need its doorbell rung.
    """

    __slots__ = (
        "_held",
        "_size",
        "_sleep_seq",
        "_tail_seen",
        "head",
        "skipped_bytes",
        "skipped_records",
    )

    def __init__(self, buf: Any, offset: int = 0) -> None:
        super().__init__(buf, offset)
        self._held: Record | None = None
        try:
            head, _tail = self._load_counters()
        except BaseException:
            self.close()
            raise
        # A reader that restarts resumes at the first record it did not consume: ``head``.
        self.head = head
        self._tail_seen = head
        self._size = 0
        self._sleep_seq: int = self._i[_SLEEP_I]
        self.skipped_records = 0
        """Records :meth:`skip_corrupt` stepped over (``skipped_bytes``: their bytes)."""
        self.skipped_bytes = 0

    def _load_tail(self) -> int:
        tail: int = self._q[_TAIL_Q]
        head = self.head
        if tail < head or tail - head > self.capacity or tail % ALIGN:
            raise CorruptRing(
                f"the writer's tail {tail} is out of range (head {head}, capacity {self.capacity})"
            )
        self._tail_seen = tail
        return tail

    @property
    def backlog(self) -> int:
        """Bytes between this reader and the writer's tail as last read (no fresh load:
        at most what is there, the writer may have committed more since)."""
        return self._tail_seen - self.head

    def has_data(self) -> bool:
        """True if a record (or a pad) waits; reads the writer's tail afresh."""
        return self.head != self._tail_seen or self._load_tail() != self.head

    def next_record(self) -> tuple[int, int, int] | None:
        """The next data record as ``(offset, length, flags)``, its payload being
        ``buffer[offset : offset + length]``, or None if the ring is empty. It stays in
        the ring until :meth:`consume`. Pads are consumed on the way. Raises CorruptRing
        for a record that fails its checks.

        Package-internal: the links' zero-copy read, which hands out nothing that could
        outlive the record (:meth:`read` is the safe one).
        """
        mv = self._mv
        cap = self.capacity
        # Typed, so that the compiled build does their arithmetic on machine integers.
        length: int
        crc: int
        tag: int
        kind: int
        flags: int
        check: int
        while True:
            head = self.head
            if head == self._tail_seen and self._load_tail() == head:
                return None
            off = head % cap
            at = self._data + off
            length, crc, tag, kind, flags, check = RECORD.unpack_from(mv, at)
            size = (length + RECORD_HEADER + ALIGN - 1) & -ALIGN
            # The common case checked inline (the hot path of every ring link); anything
            # else, pads included, goes through _header_problem, which names the fault.
            h = (
                length * 0x9E3779B1 + crc * 0x85EBCA77 + tag * 0xC2B2AE3D + (kind << 8 | flags)
            ) & (0xFFFFFFFF)
            if (
                kind != KIND_DATA
                or tag != (head >> 4) & 0xFFFFFFFF
                or check != (h ^ (h >> 16)) & 0xFFFF
                or off + size > cap
                or head + size > self._tail_seen
            ):
                problem = self._header_problem(head, off, length, crc, tag, kind, flags, check)
                if problem is not None or kind != KIND_PAD:
                    raise CorruptRing(f"record at ring position {head}: {problem}", head)
                # A pad: consumed here, and published, since it may be all that frees
                # the space a waiting writer needs.
                self.head = head + size
                self._q[_HEAD_Q] = head + size
                continue
            if (
                self.checksum
                and zlib.crc32(mv[at + RECORD_HEADER : at + RECORD_HEADER + length]) != crc
            ):
                raise CorruptRing(
                    f"record at ring position {head}: payload of {length} bytes fails its "
                    "CRC-32 (torn or overwritten)",
                    head,
                )
            self._size = size
            return at + RECORD_HEADER, length, flags

    def _header_problem(
        self,
        head: int,
        off: int,
        length: int,
        crc: int,
        tag: int,
        kind: int,
        flags: int,
        check: int,
    ) -> str | None:
        if tag != _tag(head):
            return f"header tag {tag:#x} is not this position's ({_tag(head):#x}): stale or garbage"
        if check != header_check(length, crc, tag, kind, flags):
            return "header check does not match (a torn or garbage header)"
        if kind not in (KIND_DATA, KIND_PAD):
            return f"unknown record kind {kind}"
        left = self.capacity - off - RECORD_HEADER
        if length > left:
            return f"length {length} runs past the ring end ({left} bytes left before it)"
        if head + record_size(length) > self._tail_seen:
            return f"length {length} runs past the writer's tail {self._tail_seen}"
        if kind == KIND_PAD and length != left:
            return f"pad of {length} bytes does not reach the ring end ({left} bytes left)"
        return None

    def consume(self) -> None:
        """Move past the record :meth:`next_record` returned, freeing its bytes for the
        writer. Package-internal: the links, and a :class:`Record` when it is released."""
        head = self.head + self._size
        self.head = head
        self._size = 0
        self._q[_HEAD_Q] = head

    def read(self) -> Record | None:
        """The next record, in place: valid until its :meth:`Record.release`.

        One record is held at a time: the writer may reuse its bytes as soon as it is
        released, so reading the next one first would hide that ordering.
        """
        if self._held is not None and not self._held.released:
            raise RuntimeError("release the record you hold before reading the next one")
        got = self.next_record()
        if got is None:
            return None
        start, length, flags = got
        self._held = rec = Record(self._mv, start, length, flags, self.consume)
        return rec

    def read_bytes(self) -> bytes | None:
        """The next record's payload as a copy (consumed at once), or None if empty."""
        if self._held is not None and not self._held.released:
            raise RuntimeError("release the record you hold before reading the next one")
        got = self.next_record()
        if got is None:
            return None
        start, length, _ = got
        data = bytes(self._mv[start : start + length])
        self.consume()
        return data

    def skip_corrupt(self) -> int:
        """Step over the record at the read position after it raised CorruptRing.

        With its header intact (only the payload fails its CRC) exactly that record is
        skipped. With a bad header its length cannot be trusted to find the next record,
        so everything up to the writer's tail goes. Returns the bytes skipped.
        """
        if self._held is not None and not self._held.released:
            raise RuntimeError("release the record you hold before skipping")
        head = self.head
        tail = self._load_tail()
        if head == tail:
            return 0
        off = head % self.capacity
        length, crc, tag, kind, flags, check = RECORD.unpack_from(self._mv, self._data + off)
        problem = self._header_problem(head, off, length, crc, tag, kind, flags, check)
        new_head = tail if problem is not None else head + record_size(length)
        self.head = new_head
        self._size = 0
        self._q[_HEAD_Q] = new_head
        self.skipped_records += 1
        self.skipped_bytes += new_head - head
        return new_head - head

    def set_sleeping(self, sleeping: bool) -> None:
        """Tell the writer this reader sleeps (it must ring) or is awake (it need not)."""
        seq = self._sleep_seq
        if bool(seq & 1) != sleeping:
            self._sleep_seq = seq = (seq + 1) & 0xFFFFFFFF
            self._i[_SLEEP_I] = seq

    @property
    def writer_wait(self) -> int:
        """The writer's wait counter: odd while it waits for space, so freeing some must
        ring its doorbell (once per wait)."""
        seq: int = self._i[_WAIT_I]
        return seq

    @property
    def writer_waiting(self) -> bool:
        return bool(self.writer_wait & 1)

    def close(self) -> None:
        if self._held is not None:
            self._held.invalidate()  # its bytes stay unconsumed: a new reader gets it again
        super().close()
