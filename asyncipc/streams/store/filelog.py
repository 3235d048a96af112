"""The file store: a stream's log as append-only segment files in one directory.

Layout::

    DIR/lock                          flock'ed: for life (one process), or per write
                                      (``shared=True``, several processes)
    DIR/00000000000000000001.seg      records (:mod:`.record`) with sequences >= 1
    DIR/00000000000000004097.seg      ... >= 4097; the last segment is the one written

A segment is named by the first sequence it may hold; every sequence in it is below the
next segment's name, so which segment holds a sequence is a bisection over the names.
Segments are only ever appended to: deleting a message appends a DEL record, purging
appends a PURGE record, and a segment whose messages are all gone is deleted whole (after
what killed them is on disk). The last segment is never deleted, so its name, its
messages or a PURGE record always keep the sequence high-water mark: sequences are never
reused, not even after everything was purged and the log reopened.

The index lives in memory: parallel ``array`` columns (sequence, time, subject id, size,
offset, length) and a liveness ``bytearray``, about 37 bytes a message, with subjects
interned. Nothing but :meth:`FileLog.read` (and opening) reads a file, and nothing runs a
blocking call on the event loop: one writer thread per log takes everything queued, writes
it with one ``write`` and, under ``fsync="always"``, covers the batch with one
``fdatasync`` (group commit), then wakes the waiters of :meth:`FileLog.sync` through
``call_soon_threadsafe``. Reads and recovery run in worker threads.

Recovery (in :meth:`FileLog.open`) scans the segments in order: a torn last record of the
last segment (a write the crash cut short) is cut off and counted; a segment damaged in
the middle (bad checksum, bad magic) keeps its records before the damage, is reported as a
:class:`~asyncipc.streams.store.base.LostSegment` with what was lost, and is left as it is
(never compacted, reported at every open) while the log carries on after it.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import collections
import contextlib
import ctypes
import errno
import heapq
import itertools
import logging
import os
import sys
import threading
import time as _time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from ...errors import CorruptStore, StoreError
from . import record as rec
from .base import FsyncPolicy, IndexEntry, LostSegment, RecoveryReport, StoredMessage
from .fileio import FileIO, OsFileIO
from .memory import record_size

if sys.platform != "win32":
    import fcntl

__all__ = ["LOCK_FILE", "SEGMENT_SUFFIX", "FileLog", "segment_name"]

log = logging.getLogger("asyncipc.store")

SEGMENT_SUFFIX = ".seg"
LOCK_FILE = "lock"
_DIGITS = 20
_MAX_SEQ = (1 << 63) - 1
_POLICIES = ("always", "interval", "never")
_SHARED_LOCK_WAIT = 10.0  # seconds a shared open waits for the directory lock
_POLL = 0.05  # wait_changed without inotify
_WRITE_CHUNK = 8 << 20  # a batch is written in pieces of about this size
_CACHE_OVERHEAD = 160  # bytes a cached message costs beyond its payload, roughly

# Queue items (tuples, first field the kind):
_MSG = rec.KIND_MSG  # (_MSG, seq, time, subject bytes, headers bytes | None, data)
_DEL = rec.KIND_DEL  # (_DEL, seq)
_PURGE = rec.KIND_PURGE  # (_PURGE, below, last_seq)
_BATCH = 10  # (_BATCH, [(subject, headers, data, time, subject bytes, headers bytes)], fut)
_COMPACT = 11  # (_COMPACT, segment, [DEL targets to carry], PURGE below to carry or 0)
_FLUSH = 12  # (_FLUSH,)
_CLOSE = 13  # (_CLOSE,)


def segment_name(first: int) -> str:
    """The file name of the segment whose first sequence is ``first``."""
    return f"{first:0{_DIGITS}d}{SEGMENT_SUFFIX}"


def _parse_name(name: str) -> int | None:
    if len(name) != _DIGITS + len(SEGMENT_SUFFIX) or not name.endswith(SEGMENT_SUFFIX):
        return None
    digits = name[:_DIGITS]
    if not (digits.isascii() and digits.isdigit()):
        return None
    first = int(digits)
    return first if 1 <= first <= _MAX_SEQ else None


def _copy_error(e: StoreError) -> StoreError:
    return StoreError(e.errno, e.strerror, e.filename)


def _store_error(e: OSError, doing: str, path: str) -> StoreError:
    err = StoreError(e.errno or errno.EIO, f"{doing} failed: {e.strerror or e}", path)
    err.__cause__ = e
    return err


class _Collector:
    """Records found by a scan (recovery, or catching up with other processes), in the
    shape of the index: parallel arrays, subjects interned as bytes."""

    __slots__ = (
        "del_segs",
        "del_seqs",
        "hw",
        "ids",
        "last_time",
        "lens",
        "next_seq",
        "offs",
        "purges",
        "seqs",
        "sizes",
        "subj",
        "subjects",
        "times",
    )

    def __init__(self, next_seq: int = 1, last_time: int = 0) -> None:
        self.seqs = array("q")
        self.times = array("q")
        self.subj = array("I")
        self.sizes = array("I")
        self.offs = array("q")
        self.lens = array("I")
        self.ids: dict[bytes, int] = {}
        self.subjects: list[bytes] = []
        self.del_segs = array("q")  # DEL records: the segment they are in ...
        self.del_seqs = array("q")  # ... and the sequence they remove
        self.purges: list[tuple[int, int, int]] = []  # (segment, below, high-water)
        self.next_seq = next_seq  # the lowest sequence the next message may have
        self.last_time = last_time
        self.hw = 0

    def scan(
        self, buf: bytes, segment: int, path: str, base: int = 0
    ) -> tuple[int, CorruptStore | None, int]:
        """Add the records of ``buf`` (which starts at ``base`` in segment ``segment``).

        Returns where the valid records end (in ``buf``), the damage found there if any,
        and the last good sequence seen in this buffer (0 if none)."""
        seqs_append = self.seqs.append
        times_append = self.times.append
        subj_append = self.subj.append
        sizes_append = self.sizes.append
        offs_append = self.offs.append
        lens_append = self.lens.append
        ids = self.ids
        next_seq = max(self.next_seq, segment)
        last_time = self.last_time
        good = 0
        end = 0
        damage: CorruptStore | None = None
        try:
            for kind, off, length, a, b, subject, size in rec.scan(buf, path=path, base=base):
                if kind == rec.KIND_MSG:
                    if a < next_seq:
                        damage = CorruptStore(
                            f"{path} at offset {base + off}: sequence {a} out of order "
                            f"(expected {next_seq} or more)",
                            path,
                            base + off,
                        )
                        break
                    sid = ids.get(subject)
                    if sid is None:
                        sid = ids[subject] = len(self.subjects)
                        self.subjects.append(subject)
                    if b < last_time:
                        b = last_time
                    last_time = b
                    seqs_append(a)
                    times_append(b)
                    subj_append(sid)
                    sizes_append(size)
                    offs_append(base + off)
                    lens_append(length)
                    next_seq = a + 1
                    good = a
                elif kind == rec.KIND_DEL:
                    self.del_segs.append(segment)
                    self.del_seqs.append(a)
                else:
                    self.purges.append((segment, a, b))
                    if b > self.hw and b <= _MAX_SEQ:
                        self.hw = b
                end = off + length
        except CorruptStore as e:
            damage = e
        self.next_seq = next_seq
        self.last_time = last_time
        if damage is not None and damage.offset is not None:
            end = damage.offset - base
        return end, damage, good


def _torn_tail(buf: bytes, offset: int, damage: CorruptStore) -> bool:
    """Is the damage at ``offset`` (in ``buf``, which runs to the end of the file) a torn
    write rather than corruption? Yes when the scanner says so (a record cut short, zeros
    to the end) and when the damaged record is the file's last one by its header."""
    if isinstance(damage, rec.TornRecord):
        return True
    return rec.record_end(buf, offset) == len(buf)


@dataclass(slots=True)
class _Report:
    """What the writer (or a catch-up) tells the event loop, in order."""

    op: int = 0  # queued items done (written; under "always" also fsynced)
    seq: int = 0  # non-shared: every message up to this one is done
    new_segs: list[int] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)
    w_seqs: list[int] = field(default_factory=list)  # non-shared: where messages went
    w_offs: list[int] = field(default_factory=list)
    w_lens: list[int] = field(default_factory=list)
    col: _Collector | None = None  # shared: messages new to the index, own ones included
    tombs: list[tuple[int, int, int, int]] = field(default_factory=list)  # seg, kind, a, b
    batches: list[tuple[asyncio.Future[list[int]], list[StoredMessage]]] = field(
        default_factory=list
    )
    hw: int = 0
    torn: int = 0
    lost: list[LostSegment] = field(default_factory=list)
    refused: list[asyncio.Future[list[int]]] = field(default_factory=list)  # shared, failed
    error: StoreError | None = None
    closed: bool = False
    done: asyncio.Future[None] | None = None  # resolved once applied (refresh)


@dataclass(slots=True)
class _Opened:
    """What recovery hands to the new log."""

    directory: str
    lockfd: int
    col: _Collector
    segs: list[int]
    damaged: set[int]
    report: RecoveryReport
    last_seq: int
    purge_below: int
    tail: int | None  # the segment to go on writing, its fd and size
    tail_fd: int | None
    tail_size: int
    tail_bad: bool  # the last segment is damaged: the next write starts a new one
    notify: _Inotify | None = None


def _lock_dir(lockfd: int, directory: str, shared: bool) -> None:
    if shared:
        deadline = _time.monotonic() + _SHARED_LOCK_WAIT
        while True:
            try:
                fcntl.flock(lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if _time.monotonic() > deadline:
                    raise StoreError(
                        errno.EBUSY,
                        f"the store directory stayed locked for {_SHARED_LOCK_WAIT:g} s "
                        "(is a non-shared log using it?)",
                        directory,
                    ) from None
                _time.sleep(0.01)
    try:
        fcntl.flock(lockfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StoreError(
            errno.EBUSY,
            "the store directory is in use by another log (another process, or "
            "another FileLog here); open it with shared=True to share it",
            directory,
        ) from None


def _recover(directory: str, io: FileIO, shared: bool) -> _Opened:
    """Open (create) the directory, lock it, scan every segment. Runs in a thread."""
    directory = os.path.abspath(directory)
    try:
        io.makedirs(directory)
        lockfd = os.open(
            os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
    except OSError as e:
        raise _store_error(e, "opening the store", directory) from None
    try:
        _lock_dir(lockfd, directory, shared)
        try:
            opened = _scan_directory(directory, io, lockfd)
        finally:
            if shared:
                fcntl.flock(lockfd, fcntl.LOCK_UN)
        if shared:
            opened.notify = _Inotify.create(directory)
        return opened
    except BaseException:
        os.close(lockfd)
        raise


def _scan_directory(directory: str, io: FileIO, lockfd: int) -> _Opened:
    try:
        names = io.listdir(directory)
    except OSError as e:
        raise _store_error(e, "listing the store", directory) from None
    segs: list[int] = []
    for name in names:
        first = _parse_name(name)
        if first is not None:
            segs.append(first)
        elif name != LOCK_FILE:
            log.warning("store %s: ignoring %r, which is not a segment file", directory, name)
    segs.sort()
    report = RecoveryReport()
    col = _Collector()
    damaged: set[int] = set()
    damage_at: dict[int, int] = {}  # damaged segment -> last good sequence in it
    resynced: dict[int, int] = {}  # damaged last segment -> messages seen after the damage
    hw = 0
    tail: int | None = None
    tail_fd: int | None = None
    tail_size = 0
    tail_bad = False
    kept: list[int] = []
    for i, first in enumerate(segs):
        last = i == len(segs) - 1
        path = os.path.join(directory, segment_name(first))
        try:
            fd = io.open(path, write=last)
        except OSError as e:
            raise _store_error(e, "opening a segment", path) from None
        keep = False
        try:
            size = io.size(fd)
            if first < col.next_seq:
                # Named inside the previous segment's sequences: not a file we wrote there.
                if size == 0:
                    io.unlink(path)
                    log.warning("store %s: removed an empty stray segment %s", directory, path)
                else:
                    report.lost_segments.append(
                        LostSegment(
                            segment_name(first),
                            f"{path}: its name overlaps the sequences of the segment before "
                            "it; not read (records lost in it: unknown)",
                            0,
                        )
                    )
                    log.warning("store %s: %s", directory, report.lost_segments[-1].reason)
                    if last:
                        tail_bad = True
                continue
            kept.append(first)
            hw = max(hw, first - 1)
            buf = io.pread(fd, size, 0) if size else b""
            size = len(buf)
            before = len(col.seqs)
            end, damage, good = col.scan(buf, first, path)
            report.recovered += len(col.seqs) - before
            if damage is not None and last and _torn_tail(buf, end, damage):
                io.truncate(fd, end)
                io.fsync(fd)
                report.torn_bytes += size - end
                log.warning(
                    "store %s: cut a torn write of %d bytes off the end of %s (%s)",
                    directory,
                    size - end,
                    segment_name(first),
                    damage,
                )
                size = end
                damage = None
            if damage is not None:
                damaged.add(first)
                damage_at[first] = max(good, first - 1)
                report.lost_segments.append(LostSegment(segment_name(first), str(damage), 0))
                if last:
                    tail_bad = True
                    hw = max(hw, first)  # the next segment must have another name
                    seen = {
                        r[3]
                        for r in rec.resync(buf, end + 1)
                        if r[0] == rec.KIND_MSG and damage_at[first] < r[3] <= _MAX_SEQ
                    }
                    resynced[first] = len(seen)
                    if seen:
                        hw = max(hw, max(seen))
            if last:
                tail, tail_size, keep = first, size, True
                tail_fd = fd
        except OSError as e:
            raise _store_error(e, "recovering a segment", path) from None
        finally:
            if not keep:
                io.close(fd)
    dels = sorted(col.del_seqs)
    purge_below = max((below for _s, below, _h in col.purges), default=0)
    hw = max(hw, col.hw, col.next_seq - 1)
    # What the damage cost: the sequences between the last good one and the next
    # segment's name, less those deleted anyway; at the end, what resync counted.
    for n, lost_seg in enumerate(report.lost_segments):
        first = _parse_name(lost_seg.name)
        if first is None or first not in damage_at:
            continue
        i = kept.index(first)
        lo = max(damage_at[first] + 1, purge_below)
        if i + 1 < len(kept):
            hi = kept[i + 1]
            gone = len(set(dels[bisect.bisect_left(dels, lo) : bisect.bisect_left(dels, hi)]))
            lost = max(0, hi - lo - gone)
            reason = f"{lost_seg.reason}; {lost} records after it lost"
        else:
            lost = resynced.get(first, 0)
            reason = (
                f"{lost_seg.reason}; at least {lost} records after it lost"
                if lost
                else f"{lost_seg.reason}; records lost after it: unknown"
            )
        report.lost_segments[n] = LostSegment(lost_seg.name, reason, lost)
        log.warning("store %s: segment %s is damaged: %s", directory, lost_seg.name, reason)
    return _Opened(
        directory=directory,
        lockfd=lockfd,
        col=col,
        segs=kept,
        damaged=damaged,
        report=report,
        last_seq=hw,
        purge_below=purge_below,
        tail=tail,
        tail_fd=tail_fd,
        tail_size=tail_size,
        tail_bad=tail_bad,
    )


async def _wait_through(fut: asyncio.Future[Any]) -> None:
    """Wait until ``fut`` is done, whatever cancellations come meanwhile (clean-up that
    must finish: it is a thread that cannot be stopped anyway)."""
    while not fut.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([fut])


def _release(io: FileIO, opened: _Opened) -> None:
    """Close what a recovery opened, for an open() that was cancelled (in a thread)."""
    if opened.tail_fd is not None:
        io.close(opened.tail_fd)
    os.close(opened.lockfd)
    if opened.notify is not None:
        opened.notify.close()


class _Inotify:
    """A directory watch through inotify (Linux, ctypes); None where that fails."""

    _IN_NONBLOCK = 0o4000
    _IN_CLOEXEC = 0o2000000
    _MASK = 0x2 | 0x8 | 0x80 | 0x100 | 0x200  # modify, close-write, moved-to, create, delete

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def create(cls, directory: str) -> _Inotify | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init1 = libc.inotify_init1
            init1.argtypes = [ctypes.c_int]
            init1.restype = ctypes.c_int
            add = libc.inotify_add_watch
            add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            add.restype = ctypes.c_int
            fd = int(init1(cls._IN_NONBLOCK | cls._IN_CLOEXEC))
            if fd < 0:
                return None
            if int(add(fd, os.fsencode(directory), cls._MASK)) < 0:
                os.close(fd)
                return None
            return cls(fd)
        except (OSError, AttributeError):
            return None

    def drain(self) -> None:
        """Read the pending events (non-blocking) so the fd is quiet until the next."""
        try:
            while os.read(self.fd, 65536):
                pass
        except OSError:
            pass

    def close(self) -> None:
        os.close(self.fd)


class FileLog:
    """A stream's log in segment files (see the module docstring); implements
    :class:`~asyncipc.streams.store.base.Log`.

    Open it with :meth:`open`. All methods must be called from the event loop that opened
    it. With ``shared=True`` several processes append to one directory (the ``file://``
    bus): sequences are then assigned under the directory lock, so :meth:`append` raises
    and :meth:`append_batch` is the way to append; :meth:`refresh` and
    :meth:`wait_changed` follow what the other processes write.
    """

    # ------------------------------------------------------------------ opening

    @classmethod
    async def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = "always",
        sync_interval: float = 0.1,
        segment_bytes: int = 64 << 20,
        cache_bytes: int = 32 << 20,
        io: FileIO | None = None,
        shared: bool = False,
    ) -> FileLog:
        """Open (or create) the log in ``directory``, recovering what is there.

        ``fsync``: see :data:`~asyncipc.streams.store.base.FsyncPolicy`; ``sync_interval``
        is the ``"interval"`` period. A segment is closed and a new one started once it
        reaches ``segment_bytes``. Up to ``cache_bytes`` of recent messages stay in memory
        (:meth:`cached`). ``io`` replaces the file operations (tests: ``PowerCutIO``).
        Raises :class:`~asyncipc.StoreError` if the directory cannot be used, or is in use
        by another non-shared log. Damage found is in :attr:`recovery`, not raised."""
        if fsync not in _POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(_POLICIES)}, not {fsync!r}")
        if not sync_interval > 0:
            raise ValueError(f"sync_interval must be positive, not {sync_interval!r}")
        if segment_bytes < 1:
            raise ValueError(f"segment_bytes must be positive, not {segment_bytes!r}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, not {cache_bytes!r}")
        if shared and sys.platform == "win32":  # pragma: no cover
            raise StoreError(errno.ENOTSUP, "shared logs need flock (POSIX)")
        io = io if io is not None else OsFileIO()
        loop = asyncio.get_running_loop()
        recovery = asyncio.ensure_future(
            anyio.to_thread.run_sync(_recover, os.fspath(directory), io, shared)
        )
        try:
            opened = await asyncio.shield(recovery)
        except BaseException:
            # Cancelled: the recovery goes on in its thread. Wait for it and release what
            # it opened (the directory lock above all) before the cancellation goes on, so
            # that the directory is free again when this returns.
            await _wait_through(recovery)
            if not recovery.cancelled() and recovery.exception() is None:
                await _wait_through(loop.run_in_executor(None, _release, io, recovery.result()))
            raise
        return cls(
            opened,
            loop=loop,
            io=io,
            fsync=fsync,
            sync_interval=sync_interval,
            segment_bytes=segment_bytes,
            cache_bytes=cache_bytes,
            shared=shared,
        )

    def __init__(
        self,
        opened: _Opened,
        *,
        loop: asyncio.AbstractEventLoop,
        io: FileIO,
        fsync: FsyncPolicy,
        sync_interval: float,
        segment_bytes: int,
        cache_bytes: int,
        shared: bool,
    ) -> None:
        """Use :meth:`open`."""
        self._loop = loop
        self._io = io
        self._dir = opened.directory
        self._policy: FsyncPolicy = fsync
        self._interval = sync_interval
        self._segment_bytes = segment_bytes
        self._cache_limit = cache_bytes
        self._shared = shared
        self._report = opened.report
        self._notify = opened.notify
        self._changed: asyncio.Future[None] | None = None

        # --- the index (event loop only) ---
        col = opened.col
        self._seqs = col.seqs
        self._times = col.times
        self._subj = col.subj
        self._sizes = col.sizes
        self._offs = col.offs
        self._lens = col.lens
        self._alive = bytearray(b"\x01") * len(col.seqs)
        self._subjects: list[str | None] = [s.decode(errors="replace") for s in col.subjects]
        self._subject_ids: dict[str, int] = {}
        self._subject_refs: list[int] = [0] * len(self._subjects)
        self._free_ids: list[int] = []
        self._live = 0
        self._bytes = 0
        self._last_seq = opened.last_seq
        self._last_time = col.last_time
        for seq in col.del_seqs:
            p = self._pos(seq)
            if p >= 0:
                self._alive[p] = 0
        if opened.purge_below:
            p = self._pos_ge(opened.purge_below)
            self._alive[:p] = bytes(p)
        self._live = self._alive.count(1)
        self._bytes = sum(itertools.compress(self._sizes, self._alive))
        for sid, n in collections.Counter(itertools.compress(self._subj, self._alive)).items():
            self._subject_refs[sid] = n
        for sid, name in enumerate(self._subjects):
            if self._subject_refs[sid]:
                self._subject_ids[name] = sid  # type: ignore[index]
            else:
                self._subjects[sid] = None
                self._free_ids.append(sid)
        self._head = 0  # positions below are dead
        self._trim()

        # --- segments, as the loop knows them ---
        self._segs: list[int] = list(opened.segs)
        self._ends: dict[int, int] = {
            a: b for a, b in zip(opened.segs, opened.segs[1:], strict=False)
        }
        self._seg_dels: dict[int, array[int]] = collections.defaultdict(lambda: array("q"))
        self._seg_purge: dict[int, int] = {}
        for seg, seq in zip(col.del_segs, col.del_seqs, strict=True):
            self._seg_dels[seg].append(seq)
        for seg, below, _hw in col.purges:
            self._seg_purge[seg] = max(self._seg_purge.get(seg, 0), below)
        self._damaged = set(opened.damaged)
        self._compacting: set[int] = set()
        self._compact_due = False

        # --- the cache: every message not yet written, and recent ones ---
        self._cache: dict[int, StoredMessage] = {}
        self._cache_order: collections.deque[int] = collections.deque()
        self._cache_size = 0
        self._written_seq = self._last_seq  # messages up to here have offsets

        # --- waiting for the writer ---
        self._ops = 0  # items queued
        self._done_op = 0
        self._durable_seq = self._last_seq
        self._seq_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._op_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tie = itertools.count()
        self._failed: StoreError | None = None
        self._closing = False
        self._refuse = shared  # append() must not go on: shared, closing or failed
        self._close_fut: asyncio.Future[None] | None = None
        self._feed_seq = self._last_seq  # refresh() returns what comes after

        # --- the writer thread's own state ---
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = threading.Event()
        self._lockfd = opened.lockfd
        self._w_seg = opened.tail
        self._w_fd = opened.tail_fd
        self._w_size = opened.tail_size
        self._w_bad = opened.tail_bad
        self._w_high = self._last_seq
        self._w_time = self._last_time
        self._w_pend = 0
        self._w_dirty = False
        self._w_last_sync = _time.monotonic()
        self._w_done = 0
        self._w_failed: StoreError | None = None
        self._w_segs: list[int] = list(opened.segs)  # shared: segments known to the threads
        self._scan_lock = threading.Lock()  # shared: the writer's and refresh()'s catch-up
        self._thread = threading.Thread(
            target=self._w_run, name=f"asyncipc-store:{os.path.basename(self._dir)}", daemon=True
        )
        self._thread.start()
        if self._segs[:-1]:
            self._schedule_compaction()

    # ------------------------------------------------------------------ properties

    @property
    def durable(self) -> bool:
        """True: records survive the process."""
        return True

    @property
    def directory(self) -> str:
        """The log's directory (absolute)."""
        return self._dir

    @property
    def shared(self) -> bool:
        """Whether several processes may append (``shared=True``)."""
        return self._shared

    @property
    def first_seq(self) -> int:
        """The lowest live sequence; ``last_seq + 1`` when the log is empty."""
        p = self._alive.find(1, self._head)
        if p < 0:
            return self._last_seq + 1
        self._head = p
        return self._seqs[p]

    @property
    def last_seq(self) -> int:
        """The highest sequence ever assigned (0 for a log never written)."""
        return self._last_seq

    @property
    def messages(self) -> int:
        """Live records."""
        return self._live

    @property
    def bytes(self) -> int:
        """The sum of the live records' sizes."""
        return self._bytes

    @property
    def recovery(self) -> RecoveryReport:
        """What opening found (and, in a shared log, damage found since)."""
        return self._report

    @property
    def failed(self) -> StoreError | None:
        """The write error that stopped the log, if one did."""
        return self._failed

    # ------------------------------------------------------------------ the index

    def _pos(self, seq: int) -> int:
        """The index position of ``seq``, or -1."""
        seqs = self._seqs
        n = len(seqs)
        if n:
            i = seq - seqs[0]
            if 0 <= i < n and seqs[i] == seq:
                return i
            i = bisect.bisect_left(seqs, seq)
            if i < n and seqs[i] == seq:
                return i
        return -1

    def _pos_ge(self, seq: int) -> int:
        """The first index position whose sequence is >= ``seq``."""
        seqs = self._seqs
        n = len(seqs)
        if not n:
            return 0
        i = seq - seqs[0]
        if i <= 0:
            return 0
        if i < n and seqs[i] == seq:
            return i
        return bisect.bisect_left(seqs, seq)

    def _intern(self, subject: str) -> int:
        sid = self._subject_ids.get(subject)
        if sid is None:
            if self._free_ids:
                sid = self._free_ids.pop()
                self._subjects[sid] = subject
                self._subject_refs[sid] = 0
            else:
                sid = len(self._subjects)
                self._subjects.append(subject)
                self._subject_refs.append(0)
            self._subject_ids[subject] = sid
        self._subject_refs[sid] += 1
        return sid

    def _unref(self, sid: int, n: int = 1) -> None:
        refs = self._subject_refs
        refs[sid] -= n
        if refs[sid] <= 0:
            name = self._subjects[sid]
            if name is not None and self._subject_ids.get(name) == sid:
                del self._subject_ids[name]
            self._subjects[sid] = None
            self._free_ids.append(sid)

    def _kill(self, p: int) -> None:
        self._alive[p] = 0
        self._live -= 1
        self._bytes -= self._sizes[p]
        self._unref(self._subj[p])

    def _kill_range(self, lo: int, hi: int) -> int:
        """Kill every live record in positions [lo, hi); how many."""
        alive = self._alive
        killed = 0
        p = alive.find(1, lo, hi)
        while p >= 0:
            q = alive.find(0, p, hi)
            if q < 0:
                q = hi
            n = q - p
            killed += n
            self._live -= n
            self._bytes -= sum(self._sizes[p:q])
            for sid, k in collections.Counter(self._subj[p:q]).items():
                self._unref(sid, k)
            alive[p:q] = bytes(n)
            p = alive.find(1, q, hi)
        return killed

    def _trim(self) -> None:
        """Drop the dead head of the index once it is most of it."""
        p = self._alive.find(1, self._head)
        if p < 0:
            p = len(self._alive)
        self._head = p
        if p > 4096 and 2 * p > len(self._alive):
            for column in (self._seqs, self._times, self._subj, self._sizes, self._offs):
                del column[:p]
            del self._lens[:p]
            del self._alive[:p]
            self._head = 0

    def _entry_at(self, p: int) -> IndexEntry:
        subject = self._subjects[self._subj[p]]
        assert subject is not None
        return IndexEntry(self._seqs[p], self._times[p], subject, self._sizes[p])

    def entry(self, seq: int) -> IndexEntry | None:
        """The index entry of a live record, or None. No I/O."""
        p = self._pos(seq)
        if p < 0 or not self._alive[p]:
            return None
        return self._entry_at(p)

    def entries(self, start: int = 0) -> Iterator[IndexEntry]:
        """Live records with sequence >= ``start``, in order. No I/O.

        Safe to use while the log changes: each step looks up the next sequence anew."""
        seq = start
        while True:
            p = self._alive.find(1, self._pos_ge(seq))
            if p < 0:
                return
            entry = self._entry_at(p)
            yield entry
            seq = entry.seq + 1

    def seq_at_time(self, time: int) -> int:
        """The first live sequence whose time is >= ``time`` (``last_seq + 1`` if none)."""
        p = bisect.bisect_left(self._times, time, self._head)
        p = self._alive.find(1, p)
        return self._seqs[p] if p >= 0 else self._last_seq + 1

    def cached(self, seq: int) -> StoredMessage | None:
        """The record if it is in memory (recent appends), else None. No I/O."""
        return self._cache.get(seq)

    # ------------------------------------------------------------------ writing

    def _check_writable(self) -> None:
        if self._failed is not None:
            raise StoreError(
                self._failed.errno,
                f"the log failed earlier and takes no more writes: {self._failed.strerror}",
                self._failed.filename,
            )
        if self._closing:
            raise StoreError(errno.EBADF, "the log is closed", self._dir)

    def _queue_item(self, item: tuple[Any, ...]) -> None:
        self._queue.append(item)
        self._ops += 1
        if not self._wake.is_set():
            self._wake.set()

    def _cache_put(self, msg: StoredMessage) -> None:
        self._cache[msg.seq] = msg
        self._cache_order.append(msg.seq)
        self._cache_size += len(msg.data) + _CACHE_OVERHEAD

    def _cache_drop(self, seq: int) -> None:
        msg = self._cache.pop(seq, None)
        if msg is not None:
            self._cache_size -= len(msg.data) + _CACHE_OVERHEAD

    def _cache_evict(self) -> None:
        order = self._cache_order
        while order and (self._cache_size > self._cache_limit or order[0] not in self._cache):
            if order[0] > self._written_seq:
                break  # not written yet: it stays
            self._cache_drop(order.popleft())

    @staticmethod
    def _encode(
        subject: str, headers: dict[str, str] | None, data: builtins.bytes
    ) -> tuple[builtins.bytes, builtins.bytes | None, builtins.bytes, int]:
        sb = subject.encode()
        hb = rec.encode_headers(headers) if headers is not None else None
        if type(data) is not bytes:
            data = bytes(data)
        if len(sb) > rec.MAX_SUBJECT or len(data) > rec.MAX_DATA or (hb and len(hb) > 4096):
            rec.check_message(sb, hb, data)
        return sb, hb, data, record_size(subject, headers, data)

    def append(
        self, subject: str, headers: dict[str, str] | None, data: builtins.bytes, time: int
    ) -> int:
        """Queue a record; its sequence is returned at once (in order of the calls).

        Never blocks. Await :meth:`sync` for it to be durable under the fsync policy.
        Raises :class:`~asyncipc.StoreError` when the log has failed or is closed, or is
        shared (use :meth:`append_batch`), and ValueError for a record that cannot be
        stored (subject over 65535 bytes, payload over 64 MiB, headers over 1 MiB)."""
        if self._refuse:
            self._check_writable()
            raise StoreError(
                errno.EINVAL,
                "a shared log assigns sequences under its lock: use append_batch()",
                self._dir,
            )
        # The hot path of every acknowledged publish: inlined on purpose.
        sb = subject.encode()
        if type(data) is not builtins.bytes:
            data = builtins.bytes(data)
        if headers is None:
            hb = None
            if len(sb) > rec.MAX_SUBJECT or len(data) > rec.MAX_DATA:
                rec.check_message(sb, hb, data)
            size = len(subject) + len(data)
        else:
            sb, hb, data, size = self._encode(subject, headers, data)
            headers = dict(headers)
        if time < self._last_time:
            time = self._last_time
        else:
            self._last_time = time
        seq = self._last_seq + 1
        self._last_seq = seq
        self._seqs.append(seq)
        self._times.append(time)
        sid = self._subject_ids.get(subject)
        if sid is None:
            sid = self._intern(subject)
        else:
            self._subject_refs[sid] += 1
        self._subj.append(sid)
        self._sizes.append(size)
        self._offs.append(-1)
        self._lens.append(0)
        self._alive.append(1)
        self._live += 1
        self._bytes += size
        self._cache[seq] = StoredMessage(seq, time, subject, headers, data)
        self._cache_order.append(seq)
        self._cache_size += len(data) + _CACHE_OVERHEAD
        self._queue.append((_MSG, seq, time, sb, hb, data))
        self._ops += 1
        if not self._wake.is_set():
            self._wake.set()
        return seq

    async def append_batch(
        self, items: Sequence[tuple[str, dict[str, str] | None, builtins.bytes, int]]
    ) -> list[int]:
        """Append ``(subject, headers, data, time)`` records; their sequences, once they
        are durable under the fsync policy.

        The way to append to a shared log (where :meth:`append` raises): the sequences
        are assigned under the directory lock, after what other processes wrote."""
        self._check_writable()
        if not self._shared:
            seqs = [self.append(*item) for item in items]
            if seqs:
                await self.sync(seqs[-1])
            return seqs
        if not items:
            return []
        batch = []
        for subject, headers, data, time in items:
            sb, hb, data, _size = self._encode(subject, headers, data)
            batch.append((subject, dict(headers) if headers else headers, data, time, sb, hb))
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._queue_item((_BATCH, batch, fut))
        return await fut

    async def sync(self, seq: int) -> None:
        """Return when ``seq`` (and everything before it) is written and, under
        ``"always"``, fsynced. Raises :class:`~asyncipc.StoreError` if writing failed.

        In a shared log: when everything this process queued so far is."""
        if seq > self._last_seq:
            raise ValueError(f"sequence {seq} was never assigned (last is {self._last_seq})")
        if self._shared:
            await self.flush()
            return
        if seq <= self._durable_seq:
            return
        if self._failed is not None:
            self._check_writable()
        fut: asyncio.Future[None] = self._loop.create_future()
        heapq.heappush(self._seq_waiters, (seq, next(self._tie), fut))
        await fut

    async def flush(self) -> None:
        """Return when everything queued so far (appends, deletes, purges) is done under
        the fsync policy. Raises :class:`~asyncipc.StoreError` if writing failed."""
        target = self._ops
        if target <= self._done_op:
            return
        if self._failed is not None:
            self._check_writable()
        fut: asyncio.Future[None] = self._loop.create_future()
        heapq.heappush(self._op_waiters, (target, next(self._tie), fut))
        await fut

    def delete(self, seq: int) -> bool:
        """Remove one live record (a DEL record, made durable like an append). False if
        it is not live."""
        self._check_writable()
        p = self._pos(seq)
        if p < 0 or not self._alive[p]:
            return False
        self._kill(p)
        self._cache_drop(seq)
        self._queue_item((_DEL, seq))
        if self._segs and seq < self._segs[-1]:
            self._schedule_compaction()
        if p == self._head:
            self._trim()
        return True

    def purge(self, below: int) -> int:
        """Remove every record with a sequence below ``below``; how many went."""
        self._check_writable()
        below = min(below, self._last_seq + 1)
        hi = self._pos_ge(below)
        n = self._kill_range(self._head, hi)
        if not n:
            return 0
        order = self._cache_order
        while order and order[0] < below:
            self._cache_drop(order.popleft())
        self._queue_item((_PURGE, below, self._last_seq))
        self._schedule_compaction()
        self._trim()
        return n

    # ------------------------------------------------------------------ compaction

    def _schedule_compaction(self) -> None:
        if not self._compact_due:
            self._compact_due = True
            self._loop.call_soon(self._compact)

    def _compact(self) -> None:
        """Queue the removal of every sealed segment whose records are all dead, with
        the DEL/PURGE records in it that earlier segments still need carried forward."""
        self._compact_due = False
        if self._closing or self._failed is not None:
            return
        segs = self._segs
        alive = self._alive
        ends = self._ends
        survivors: list[int] = []  # earlier segments that stay
        for i in range(len(segs) - 1):  # the last one is being written
            name = segs[i]
            if name in self._compacting:
                continue
            end = ends.get(name, segs[i + 1])
            dead = name not in self._damaged and (
                alive.find(1, self._pos_ge(name), self._pos_ge(end)) < 0
            )
            if not dead:
                survivors.append(name)
                continue
            carry: list[int] = []
            carry_purge = 0
            if survivors:
                for target in self._seg_dels.get(name, ()):
                    j = bisect.bisect_right(survivors, target) - 1
                    if j >= 0 and target < ends.get(survivors[j], _MAX_SEQ):
                        carry.append(target)
                below = self._seg_purge.get(name, 0)
                if below > survivors[0]:
                    carry_purge = below
            self._compacting.add(name)
            self._queue_item((_COMPACT, name, carry, carry_purge))

    # ------------------------------------------------------------------ reports

    def _apply(self, rep: _Report) -> None:
        """Take in what a writer batch or a catch-up did (event loop)."""
        for name in rep.new_segs:
            if self._segs and name <= self._segs[-1]:
                continue
            if self._segs:
                self._ends[self._segs[-1]] = name
            self._segs.append(name)
        if rep.new_segs and len(self._segs) > 1:
            self._compact_due_now()
        col = rep.col
        if col is not None and len(col.seqs):
            self._merge(col)
        if rep.w_seqs:
            self._set_offsets(rep)
        if rep.hw > self._last_seq:
            self._last_seq = rep.hw
        for seg, kind, a, _b in rep.tombs:
            if kind == rec.KIND_DEL:
                self._seg_dels[seg].append(a)
            else:
                self._seg_purge[seg] = max(self._seg_purge.get(seg, 0), a)
            if self._shared:  # others' deletes (ours were applied already: no harm)
                if kind == rec.KIND_DEL:
                    p = self._pos(a)
                    if p >= 0 and self._alive[p]:
                        self._kill(p)
                        self._cache_drop(a)
                else:
                    self._kill_range(self._head, self._pos_ge(a))
                    order = self._cache_order
                    while order and order[0] < a:
                        self._cache_drop(order.popleft())
        if rep.tombs and self._shared:
            self._trim()
            self._compact_due_now()
        for name in rep.gone:
            self._compacting.discard(name)
            i = bisect.bisect_left(self._segs, name)
            if i < len(self._segs) and self._segs[i] == name:
                del self._segs[i]
            self._ends.pop(name, None)
            self._seg_dels.pop(name, None)
            self._seg_purge.pop(name, None)
            self._damaged.discard(name)
        if rep.gone:
            self._compact_due_now()
        if rep.torn:
            self._report.torn_bytes += rep.torn
        for lost in rep.lost:
            self._report.lost_segments.append(lost)
            first = _parse_name(lost.name)
            if first is not None:
                self._damaged.add(first)
        for fut, msgs in rep.batches:
            for msg in msgs:
                if self._pos(msg.seq) >= 0 and self._alive[self._pos(msg.seq)]:
                    self._cache_put(msg)
            if not fut.done():
                fut.set_result([m.seq for m in msgs])
        newly_failed = rep.error is not None and self._failed is None
        if rep.error is not None and self._failed is None:
            self._fail(rep.error)
        for fut in rep.refused:
            if not fut.done():
                fut.set_exception(_copy_error(rep.error or StoreError(errno.EIO, "failed")))
        if rep.seq > self._durable_seq:
            self._durable_seq = rep.seq
            waiters = self._seq_waiters
            while waiters and waiters[0][0] <= rep.seq:
                fut0 = heapq.heappop(waiters)[2]
                if not fut0.done():
                    fut0.set_result(None)
        if rep.op > self._done_op:
            self._done_op = rep.op
            waiters = self._op_waiters
            while waiters and waiters[0][0] <= rep.op:
                fut0 = heapq.heappop(waiters)[2]
                if not fut0.done():
                    fut0.set_result(None)
        self._cache_evict()
        if rep.done is not None and not rep.done.done():
            rep.done.set_result(None)
        if rep.closed and self._close_fut is not None and not self._close_fut.done():
            if newly_failed and rep.error is not None:  # the last write failed
                self._close_fut.set_exception(_copy_error(rep.error))
            else:  # (a failure reported before was raised to its waiters then)
                self._close_fut.set_result(None)

    def _compact_due_now(self) -> None:
        self._schedule_compaction()

    def _set_offsets(self, rep: _Report) -> None:
        seqs = rep.w_seqs
        n = len(seqs)
        p = self._pos(seqs[0])
        if p >= 0 and p + n <= len(self._seqs) and self._seqs[p + n - 1] == seqs[-1]:
            self._offs[p : p + n] = array("q", rep.w_offs)
            self._lens[p : p + n] = array("I", rep.w_lens)
        else:
            for seq, off, ln in zip(seqs, rep.w_offs, rep.w_lens, strict=True):
                q = self._pos(seq)
                if q >= 0:
                    self._offs[q] = off
                    self._lens[q] = ln
        if seqs[-1] > self._written_seq:
            self._written_seq = seqs[-1]

    def _merge(self, col: _Collector) -> None:
        """Add messages found on disk (shared mode) to the index."""
        local = [self._intern_only(s.decode(errors="replace")) for s in col.subjects]
        last = self._seqs[-1] if len(self._seqs) else 0
        start = 0
        n = len(col.seqs)
        while start < n and col.seqs[start] <= last:
            start += 1  # already known (cannot happen, but never add a sequence twice)
        for i in range(start, n):
            sid = local[col.subj[i]]
            self._subject_refs[sid] += 1
        self._seqs.extend(col.seqs[start:])
        self._times.extend(col.times[start:])
        self._subj.extend(array("I", (local[s] for s in col.subj[start:])))
        self._sizes.extend(col.sizes[start:])
        self._offs.extend(col.offs[start:])
        self._lens.extend(col.lens[start:])
        self._alive.extend(b"\x01" * (n - start))
        self._live += n - start
        self._bytes += sum(col.sizes[start:])
        for sid in set(local):
            if self._subject_refs[sid] == 0:
                self._unref(sid, 0)
        if n:
            self._last_seq = max(self._last_seq, col.seqs[-1])
            self._last_time = max(self._last_time, col.times[-1])
            self._written_seq = max(self._written_seq, col.seqs[-1])
            self._durable_seq = max(self._durable_seq, col.seqs[-1])

    def _intern_only(self, subject: str) -> int:
        sid = self._intern(subject)
        self._subject_refs[sid] -= 1
        return sid

    def _fail(self, error: StoreError) -> None:
        self._failed = error
        self._refuse = True
        for waiters in (self._seq_waiters, self._op_waiters):
            for _target, _tie, fut in waiters:
                if not fut.done():
                    fut.set_exception(_copy_error(error))
            waiters.clear()

    # ------------------------------------------------------------------ reading

    async def read(self, seqs: Sequence[int]) -> list[StoredMessage | None]:
        """The records, None for those not live. One trip off the loop for the batch;
        every record read from disk has its checksum verified (CorruptStore otherwise)."""
        out: list[StoredMessage | None] = [None] * len(seqs)
        todo: list[tuple[int, int, int, int, int]] = []  # index, seq, segment, offset, len
        segs = self._segs
        for i, seq in enumerate(seqs):
            p = self._pos(seq)
            if p < 0 or not self._alive[p]:
                continue
            msg = self._cache.get(seq)
            if msg is not None:
                out[i] = msg
                continue
            off = self._offs[p]
            j = bisect.bisect_right(segs, seq) - 1
            if off < 0 or j < 0:
                continue
            todo.append((i, seq, segs[j], off, self._lens[p]))
        if todo:
            found = await anyio.to_thread.run_sync(_read_records, self._io, self._dir, todo)
            for i, msg in found:
                out[i] = msg
        return out

    # ------------------------------------------------------------------ shared logs

    async def refresh(self) -> list[IndexEntry]:
        """Catch up with what other processes appended (and deleted); the live entries
        appended since the previous call (by any process, this one included), in order.
        The first call returns what came after :meth:`open`. Not shared: the same, with
        no reading (there is nobody else)."""
        if self._shared and self._closing is False:
            done: asyncio.Future[None] = self._loop.create_future()
            await anyio.to_thread.run_sync(self._refresh_blocking, done)
            await done
        start = self._feed_seq + 1
        self._feed_seq = self._last_seq
        return list(self.entries(start))

    def _refresh_blocking(self, done: asyncio.Future[None]) -> None:
        rep = _Report(done=done)
        with self._scan_lock:
            if self._w_failed is None and self._lockfd >= 0:
                try:
                    self._catch_up(False, rep)
                except OSError as e:
                    rep.error = None
                    log.warning("store %s: catching up failed: %s", self._dir, e)
            self._post(rep)

    async def wait_changed(self, timeout: float) -> None:
        """Return when the directory's files may have changed, or after ``timeout``
        seconds. Uses inotify on Linux, else it just waits 50 ms (a poll)."""
        notify = self._notify
        if notify is None or self._closing:
            await asyncio.sleep(min(timeout, _POLL))
            return
        fut = self._changed
        if fut is None or fut.done():
            fut = self._changed = self._loop.create_future()
            self._loop.add_reader(notify.fd, self._on_changed)
        await asyncio.wait([fut], timeout=timeout)

    def _on_changed(self) -> None:
        notify = self._notify
        if notify is not None:
            self._loop.remove_reader(notify.fd)
            notify.drain()
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        """Write and fsync what is queued (whatever the policy), stop the writer thread,
        release the files. Idempotent. Raises :class:`~asyncipc.StoreError` if that last
        write fails."""
        if self._close_fut is not None:
            await asyncio.wait([self._close_fut])
            return
        self._closing = True
        self._refuse = True
        self._close_fut = self._loop.create_future()
        self._queue_item((_CLOSE,))
        try:
            await asyncio.shield(self._close_fut)
        finally:
            notify, self._notify = self._notify, None
            if notify is not None and self._changed is not None and not self._changed.done():
                self._loop.remove_reader(notify.fd)
                self._changed.set_result(None)
            await _wait_through(
                asyncio.ensure_future(anyio.to_thread.run_sync(self._finish, notify))
            )
            for waiters in (self._seq_waiters, self._op_waiters):
                for _target, _tie, fut in waiters:
                    if not fut.done():
                        fut.set_exception(StoreError(errno.EBADF, "the log was closed", self._dir))
                waiters.clear()

    def _finish(self, notify: _Inotify | None) -> None:
        self._thread.join()
        if notify is not None:
            notify.close()

    # ================================================================== writer thread

    def _post(self, rep: _Report) -> None:
        try:
            self._loop.call_soon_threadsafe(self._apply, rep)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _w_run(self) -> None:
        queue = self._queue
        wake = self._wake
        closing = False
        while not closing:
            timeout = None
            if self._w_dirty and self._policy == "interval" and self._w_failed is None:
                timeout = max(0.0, self._w_last_sync + self._interval - _time.monotonic())
            wake.wait(timeout)
            wake.clear()
            items = [queue.popleft() for _ in range(len(queue))]
            closing = any(item[0] == _CLOSE for item in items)
            rep = _Report()
            try:
                if self._w_failed is None:
                    if items:
                        self._w_batch(items, rep)
                    if self._w_dirty and (
                        closing
                        or (
                            self._policy == "interval"
                            and _time.monotonic() - self._w_last_sync >= self._interval
                        )
                    ):
                        with self._scan_lock:
                            self._w_sync()
            except OSError as e:
                err = (
                    e
                    if isinstance(e, StoreError)
                    else _store_error(e, "writing", self._w_path(self._w_seg or 0))
                )
                self._w_failed = err
                log.error("store %s: %s; the log takes no more writes", self._dir, err)
            except BaseException as e:  # a bug: fail loudly rather than hang the waiters
                log.exception("store %s: the writer thread failed", self._dir)
                self._w_failed = StoreError(
                    errno.EIO, f"the store's writer failed: {e!r}", self._dir
                )
            self._w_done += len(items)
            if self._w_failed is not None:
                # Nothing of a failed batch counts: its writes may be partial.
                rep = _Report(error=self._w_failed)
                rep.refused = [item[2] for item in items if item[0] == _BATCH]
            else:
                rep.op = self._w_done
                rep.seq = self._w_high if not self._shared else 0
            if closing:
                with self._scan_lock:
                    self._w_release()
                rep.closed = True
            if items or rep.error is not None or closing:
                self._post(rep)

    def _w_release(self) -> None:
        for fd in (self._w_fd, self._lockfd):
            if fd is not None and fd >= 0:
                try:
                    if fd == self._lockfd:
                        os.close(fd)
                    else:
                        self._io.close(fd)
                except OSError:
                    pass
        self._w_fd = None
        self._lockfd = -1

    def _w_sync(self) -> None:
        if self._w_fd is not None and self._w_dirty:
            self._io.fdatasync(self._w_fd)
        self._w_dirty = False
        self._w_last_sync = _time.monotonic()

    def _w_batch(self, items: list[tuple[Any, ...]], rep: _Report) -> None:
        shared = self._shared
        if shared:
            self._scan_lock.acquire()
        try:
            if shared:
                fcntl.flock(self._lockfd, fcntl.LOCK_EX)
            try:
                if shared:
                    self._catch_up(True, rep)
                self._w_items(items, rep)
            finally:
                if shared:
                    fcntl.flock(self._lockfd, fcntl.LOCK_UN)
            if self._policy == "always" and self._w_dirty:
                self._w_sync()
        finally:
            if shared:
                self._scan_lock.release()

    def _w_path(self, seg: int | None = None) -> str:
        if seg is None:
            seg = self._w_seg or 0
        return os.path.join(self._dir, segment_name(seg))

    def _w_items(self, items: list[tuple[Any, ...]], rep: _Report) -> None:
        parts: list[builtins.bytes] = []
        limit = self._segment_bytes
        for item in items:
            kind = item[0]
            if kind == _MSG:
                if self._w_must_roll(limit):
                    self._w_roll(parts, rep)
                _, seq, time, sb, hb, data = item
                n = rec.append_message(parts, seq, time, sb, hb, data)
                rep.w_seqs.append(seq)
                rep.w_offs.append(self._w_size + self._w_pend)
                rep.w_lens.append(n)
                self._w_pend += n
                self._w_high = seq
                if self._w_pend >= _WRITE_CHUNK:
                    self._w_write(parts)  # one fsync still covers the batch
            elif kind == _BATCH:
                self._w_shared_batch(item, parts, rep)
            elif kind in (_DEL, _PURGE):
                if self._w_must_roll(limit):
                    self._w_roll(parts, rep)
                if kind == _DEL:
                    data = rec.encode_delete(item[1])
                    rep.tombs.append((self._w_seg or 0, _DEL, item[1], 0))
                else:
                    hw = max(item[2], self._w_high)
                    data = rec.encode_purge(item[1], hw)
                    rep.tombs.append((self._w_seg or 0, _PURGE, item[1], hw))
                parts.append(data)
                self._w_pend += len(data)
            elif kind == _COMPACT:
                self._w_compact(item, parts, rep)
        self._w_write(parts)

    def _w_must_roll(self, limit: int) -> bool:
        """Whether the next record goes to a new segment: there is none to write to, it
        is damaged, or it is full. A full segment holding no message yet (only DEL/PURGE
        records) is not rolled: the next one would need its name (the next sequence)."""
        if self._w_fd is None or self._w_bad:
            return True
        return self._w_size + self._w_pend >= limit and (
            self._w_seg is None or self._w_high >= self._w_seg
        )

    def _w_shared_batch(
        self, item: tuple[Any, ...], parts: list[builtins.bytes], rep: _Report
    ) -> None:
        _, batch, fut = item
        col = rep.col
        if col is None:
            col = rep.col = _Collector(self._w_high + 1, self._w_time)
        msgs: list[StoredMessage] = []
        for subject, headers, data, time, sb, hb in batch:
            if self._w_must_roll(self._segment_bytes):
                self._w_roll(parts, rep)
            seq = self._w_high + 1
            self._w_high = seq
            if time < self._w_time:
                time = self._w_time
            self._w_time = time
            off = self._w_size + self._w_pend
            n = rec.append_message(parts, seq, time, sb, hb, data)
            self._w_pend += n
            sid = col.ids.get(sb)
            if sid is None:
                sid = col.ids[sb] = len(col.subjects)
                col.subjects.append(sb)
            size = record_size(subject, headers, data)
            col.seqs.append(seq)
            col.times.append(time)
            col.subj.append(sid)
            col.sizes.append(size)
            col.offs.append(off)
            col.lens.append(n)
            msgs.append(StoredMessage(seq, time, subject, headers, data))
            if self._w_pend >= _WRITE_CHUNK:
                self._w_write(parts)
        rep.batches.append((fut, msgs))

    def _w_write(self, parts: list[builtins.bytes]) -> None:
        if parts:
            data = b"".join(parts) if len(parts) > 1 else parts[0]
            parts.clear()
            assert self._w_fd is not None
            try:
                self._io.append(self._w_fd, data)
            except OSError as e:
                raise _store_error(e, "writing", self._w_path()) from None
            self._w_size += len(data)
            self._w_dirty = True
        self._w_pend = 0

    def _w_roll(self, parts: list[builtins.bytes], rep: _Report) -> None:
        """Start a new segment, named by the next sequence (after fsyncing the last)."""
        self._w_write(parts)
        if self._w_fd is not None:
            try:
                self._w_sync()  # a segment is complete on disk before the next one starts
            except OSError as e:
                raise _store_error(e, "fsync", self._w_path()) from None
            self._io.close(self._w_fd)
            self._w_fd = None
        name = self._w_high + 1  # > every sequence so far, <= every one to come
        path = self._w_path(name)
        try:
            self._w_fd = self._io.open(path, write=True, create=True)
            if self._policy != "never":
                self._io.fsync_dir(self._dir)
        except OSError as e:
            raise _store_error(e, "creating a segment", path) from None
        self._w_seg = name
        self._w_size = 0
        self._w_pend = 0
        self._w_bad = False
        self._w_dirty = False
        self._w_segs.append(name)
        rep.new_segs.append(name)
        if self._shared:
            rep.hw = max(rep.hw, name - 1)

    def _w_compact(self, item: tuple[Any, ...], parts: list[builtins.bytes], rep: _Report) -> None:
        """Carry the tombstones still needed forward, make them and everything before
        durable, then delete the dead segment."""
        _, name, carry, carry_purge = item
        if name == self._w_seg:
            return  # (cannot happen: the loop never compacts the last segment it knows)
        if carry or carry_purge:
            if self._w_fd is None or self._w_bad:
                self._w_roll(parts, rep)
            for target in carry:
                parts.append(rec.encode_delete(target))
                rep.tombs.append((self._w_seg or 0, _DEL, target, 0))
            if carry_purge:
                parts.append(rec.encode_purge(carry_purge, self._w_high))
                rep.tombs.append((self._w_seg or 0, _PURGE, carry_purge, self._w_high))
        self._w_write(parts)
        if self._w_dirty:
            try:
                self._w_sync()
            except OSError as e:
                raise _store_error(e, "fsync", self._w_path()) from None
        path = self._w_path(name)
        try:
            self._io.unlink(path)
            self._io.fsync_dir(self._dir)
        except FileNotFoundError:
            pass  # another process removed it (shared)
        except OSError as e:
            raise _store_error(e, "removing a segment", path) from None
        if name in self._w_segs:
            self._w_segs.remove(name)
        rep.gone.append(name)

    # --- shared: catching up with the other processes (under _scan_lock) ---

    def _catch_up(self, locked: bool, rep: _Report) -> None:
        """Read what other processes appended since we last looked, into ``rep``.

        ``locked``: we hold the directory lock, so nobody is writing: a torn tail is cut
        off and a damaged last segment makes the next write start a new one. Without the
        lock an incomplete tail is only not read yet."""
        try:
            names = sorted(
                n for n in (_parse_name(x) for x in self._io.listdir(self._dir)) if n is not None
            )
        except OSError as e:
            raise _store_error(e, "listing the store", self._dir) from None
        present = set(names)
        for name in self._w_segs:
            if name not in present:
                rep.gone.append(name)
        self._w_segs = [n for n in self._w_segs if n in present]
        current = self._w_seg
        known = max(current or 0, self._w_segs[-1] if self._w_segs else 0)
        newer = [n for n in names if n > known]
        if rep.col is None:
            rep.col = _Collector(self._w_high + 1, self._w_time)
        col = rep.col
        if current is not None and current in present and not self._w_bad:
            self._w_follow(col, current, locked, not newer, newer[0] if newer else 0, rep)
        for i, name in enumerate(newer):
            if self._w_fd is not None:
                self._io.close(self._w_fd)
                self._w_fd = None
            path = self._w_path(name)
            try:
                fd = self._io.open(path, write=True)
            except FileNotFoundError:
                continue  # created and removed since the listing
            self._w_fd, self._w_seg, self._w_size, self._w_bad = fd, name, 0, False
            self._w_pend = 0
            self._w_dirty = False
            self._w_segs.append(name)
            rep.new_segs.append(name)
            last = i == len(newer) - 1
            self._w_follow(col, name, locked, last, 0 if last else newer[i + 1], rep)
            self._w_high = max(self._w_high, name - 1)
        self._w_high = max(self._w_high, col.next_seq - 1, col.hw)
        self._w_time = max(self._w_time, col.last_time)
        rep.hw = max(rep.hw, self._w_high)
        for seg, seq in zip(col.del_segs, col.del_seqs, strict=True):
            rep.tombs.append((seg, _DEL, seq, 0))
        for seg, below, hw in col.purges:
            rep.tombs.append((seg, _PURGE, below, hw))
        del col.del_segs[:]
        del col.del_seqs[:]
        col.purges.clear()

    def _w_follow(
        self, col: _Collector, name: int, locked: bool, last: bool, next_name: int, rep: _Report
    ) -> None:
        """Scan segment ``name`` (the fd in ``_w_fd``) from ``_w_size`` to its end."""
        fd = self._w_fd
        assert fd is not None
        path = self._w_path(name)
        start = self._w_size
        size = self._io.size(fd)
        if size <= start:
            return
        buf = self._io.pread(fd, size - start, start)
        end, damage, good = col.scan(buf, name, path, start)
        self._w_size = start + end
        if damage is None:
            return
        if last and not locked:
            return  # being written, or damage the next writer will deal with
        if last and _torn_tail(buf, end, damage):
            self._io.truncate(fd, start + end)
            rep.torn += size - start - end
            log.warning(
                "store %s: cut a torn write of %d bytes off the end of %s (%s)",
                self._dir,
                size - start - end,
                segment_name(name),
                damage,
            )
            return
        self._w_bad = True
        if last:
            lost, why = 0, "records lost after it: unknown"
            self._w_high = max(self._w_high, name)
        else:
            lost = max(0, next_name - max(good, name - 1, col.next_seq - 1) - 1)
            why = f"{lost} records after it lost"
        reason = f"{damage}; {why}"
        log.warning("store %s: segment %s is damaged: %s", self._dir, segment_name(name), reason)
        rep.lost.append(LostSegment(segment_name(name), reason, lost))


def _read_records(
    io: FileIO, directory: str, todo: list[tuple[int, int, int, int, int]]
) -> list[tuple[int, StoredMessage | None]]:
    """Read records (index, seq, segment, offset, length) with pread, adjacent ones in
    one call; runs in a thread."""
    out: list[tuple[int, StoredMessage | None]] = []
    todo.sort(key=lambda t: (t[2], t[3]))
    k = 0
    while k < len(todo):
        seg = todo[k][2]
        group_end = k
        while group_end < len(todo) and todo[group_end][2] == seg:
            group_end += 1
        path = os.path.join(directory, segment_name(seg))
        try:
            fd = io.open(path)
        except FileNotFoundError:  # removed since (shared): those records are gone
            out.extend((t[0], None) for t in todo[k:group_end])
            k = group_end
            continue
        except OSError as e:
            raise _store_error(e, "reading", path) from None
        try:
            while k < group_end:
                run_end = k + 1
                stop = todo[k][3] + todo[k][4]
                while (
                    run_end < group_end
                    and todo[run_end][3] == stop
                    and stop - todo[k][3] < (8 << 20)
                ):
                    stop += todo[run_end][4]
                    run_end += 1
                base = todo[k][3]
                try:
                    buf = io.pread(fd, stop - base, base)
                except OSError as e:
                    raise _store_error(e, "reading", path) from None
                for i, seq, _seg, off, ln in todo[k:run_end]:
                    if off + ln - base > len(buf):
                        raise CorruptStore(
                            f"{path} at offset {off}: the record runs past the end of the file",
                            path,
                            off,
                        )
                    msg = rec.decode_message(buf, off - base, path=path, base=base)
                    if msg.seq != seq:
                        raise CorruptStore(
                            f"{path} at offset {off}: found sequence {msg.seq}, not {seq}",
                            path,
                            off,
                        )
                    out.append((i, msg))
                k = run_end
        finally:
            io.close(fd)
    return out
