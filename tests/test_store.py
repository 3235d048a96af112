"""The file store (asyncipc/streams/store): records, recovery, power cuts, SIGKILL, sharing.

Real files in tmp_path and real processes; the only stand-in is the file-I/O layer, which
still does every real write but counts fsyncs (group commit) or remembers what they made
durable (``PowerCutIO``: a power cut forgets the rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncipc.errors import CorruptStore, StoreError
from asyncipc.streams.store import FileLog, LostSegment
from asyncipc.streams.store import record as rec
from asyncipc.streams.store.fileio import OsFileIO, PowerCutIO
from asyncipc.streams.store.filelog import segment_name
from asyncipc.streams.store.memory import record_size

HERE = Path(__file__).parent
ROOT = HERE.parent
ONE_LOOP = pytest.mark.asyncio(loop_factories=["asyncio"])  # heavy: once is enough


def segments(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix == ".seg")


def now() -> int:
    return time.time_ns()


async def append_synced(log: FileLog, n: int, subject: str = "t.x", size: int = 10) -> list[int]:
    seqs = [log.append(subject, None, os.urandom(size), now()) for _ in range(n)]
    if seqs:
        await log.sync(seqs[-1])
    return seqs


def append_bytes(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# --- the record format ---------------------------------------------------------------


def test_records_encode_and_scan() -> None:
    msg = rec.encode_message(7, 123, "a.b", {"k": "v", "é": "ü"}, b"payload")
    assert rec.decode_message(msg).headers == {"k": "v", "é": "ü"}
    buf = (
        msg
        + rec.encode_delete(7)
        + rec.encode_purge(5, 9)
        + rec.encode_message(8, 124, "ä.x", None, b"")
    )
    kinds = [(r[0], r[3], r[4]) for r in rec.scan(buf)]
    assert kinds == [
        (rec.KIND_MSG, 7, 123),
        (rec.KIND_DEL, 7, 0),
        (rec.KIND_PURGE, 5, 9),
        (rec.KIND_MSG, 8, 124),
    ]
    # The size the scanner reports is the one the engine counts (memory.record_size).
    sizes = [r[6] for r in rec.scan(buf) if r[0] == rec.KIND_MSG]
    assert sizes == [
        record_size("a.b", {"k": "v", "é": "ü"}, b"payload"),
        record_size("ä.x", None, b""),
    ]
    assert rec.decode_message(rec.encode_message(1, 1, "s", {}, b"")).headers == {}


def test_scanner_tells_torn_from_corrupt() -> None:
    one = rec.encode_message(1, 1, "a", None, b"x" * 100)
    two = rec.encode_message(2, 2, "a", None, b"y" * 100)
    with pytest.raises(rec.TornRecord) as torn:
        list(rec.scan(one + two[:50]))
    assert torn.value.offset == len(one)
    with pytest.raises(rec.TornRecord):
        list(rec.scan(one + two[:5]))  # inside the header
    with pytest.raises(rec.TornRecord):
        list(rec.scan(one + bytes(300)))  # zeros: a file extended but never written
    bad = bytearray(one + two)
    bad[len(one) + 40] ^= 0xFF
    with pytest.raises(CorruptStore, match="checksum") as corrupt:
        list(rec.scan(bytes(bad), path="seg"))
    assert not isinstance(corrupt.value, rec.TornRecord)
    assert (corrupt.value.path, corrupt.value.offset) == ("seg", len(one))
    with pytest.raises(CorruptStore, match="bad magic"):
        list(rec.scan(one + b"garbage that is not a record at all"))


def test_absurd_lengths_are_corrupt_and_allocate_nothing() -> None:
    head = bytearray(rec.encode_message(1, 1, "a", None, b"x"))
    head[8:12] = (0xFFFFFFF0).to_bytes(4, "little")  # a 4 GiB body
    tracemalloc.start()
    try:
        with pytest.raises(CorruptStore, match="impossible record length") as e:
            list(rec.scan(bytes(head) + os.urandom(1000)))
        with pytest.raises(CorruptStore):
            rec.decode_message(bytes(head))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not isinstance(e.value, rec.TornRecord)
    assert peak < 1 << 20
    with pytest.raises(ValueError, match="subject"):
        rec.encode_message(1, 1, "s" * 70000, None, b"")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096), st.integers(0, 3))
def test_fuzz_scanner_raises_only_corrupt_store(data: bytes, mode: int) -> None:
    good = rec.encode_message(3, 9, "f.z", {"h": "v"}, b"data" * 10) + rec.encode_delete(3)
    if mode == 1:  # a valid prefix, then garbage
        data = good + data
    elif mode == 2 and data:  # valid records with bytes overwritten
        buf = bytearray(good * 3)
        for i, b in enumerate(data[:16]):
            buf[(i * 37 + b) % len(buf)] = b
        data = bytes(buf)
    elif mode == 3:  # a plausible header with random fields
        data = rec.MAGIC_BYTES + data
    tracemalloc.start()
    try:
        with contextlib.suppress(CorruptStore):
            for _ in rec.scan(data):
                pass
        for off in range(0, min(len(data), 64)):
            with contextlib.suppress(CorruptStore):
                rec.decode_message(data, off)
        for _ in rec.resync(data, 0):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (1 << 20) + 4 * len(data)


# --- the log ---------------------------------------------------------------------------


async def test_round_trip_headers_empty_and_large(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path)
    assert (log.first_seq, log.last_seq, log.messages, log.durable) == (1, 0, 0, True)
    big = os.urandom(5 << 20)
    items = [
        ("a.b", {"k": "v", "ключ": "значение"}, b"hello"),
        ("a.c", None, b""),
        ("a.ü", {}, big),
    ]
    seqs = [log.append(s, h, d, now()) for s, h, d in items]
    assert seqs == [1, 2, 3]
    await log.sync(3)
    assert log.bytes == sum(record_size(*item) for item in items)
    assert [e.size for e in log.entries()] == [record_size(*item) for item in items]
    got = await log.read([1, 2, 3, 4, 0])
    assert [(m.subject, m.headers, m.data) for m in got[:3] if m] == items
    assert got[3:] == [None, None]
    await log.close()
    log = await FileLog.open(tmp_path)  # nothing cached: every read is from disk
    assert log.cached(1) is None
    got = await log.read([3, 1, 2])
    assert [(m.seq, m.subject, m.headers, m.data) for m in got if m] == [
        (3, *items[2]),
        (1, *items[0]),
        (2, *items[1]),
    ]
    assert log.bytes == sum(record_size(*item) for item in items)
    await log.close()


async def test_sequences_continue_across_reopen(tmp_path: Path) -> None:
    for round_ in range(3):
        log = await FileLog.open(tmp_path)
        seqs = await append_synced(log, 5)
        assert seqs == list(range(round_ * 5 + 1, round_ * 5 + 6))
        await log.close()
    log = await FileLog.open(tmp_path)
    assert (log.first_seq, log.last_seq, log.messages) == (1, 15, 15)
    assert log.recovery.recovered == 15
    await log.close()


async def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path)
    log.append("a", None, b"x", now())
    await log.close()
    await log.close()
    with pytest.raises(StoreError, match="closed"):
        log.append("a", None, b"x", now())
    log = await FileLog.open(tmp_path)
    assert log.messages == 1  # close wrote what was queued
    await log.close()


async def test_one_directory_one_unshared_log(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path)
    with pytest.raises(StoreError, match="in use"):
        await FileLog.open(tmp_path)
    await log.close()
    log = await FileLog.open(tmp_path)
    await log.close()


async def test_a_cancelled_open_leaves_the_directory_usable(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path)
    await append_synced(log, 1000)
    await log.close()
    for n, delay in enumerate((0, 0.0005, 0.002)):
        task = asyncio.ensure_future(FileLog.open(tmp_path))
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if not task.cancelled():
            await task.result().close()
        log = await FileLog.open(tmp_path)  # not "in use"
        assert log.messages == 1000 + n
        log.append("c", None, b"", now())
        closing = asyncio.ensure_future(log.close())
        await asyncio.sleep(0)
        closing.cancel()  # the close still finishes (and releases the directory)
        with contextlib.suppress(asyncio.CancelledError):
            await closing
    log = await FileLog.open(tmp_path)
    assert log.messages == 1003
    await log.close()


async def test_rollover_and_whole_segment_deletion(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path, segment_bytes=2048)
    await append_synced(log, 300, size=50)
    names = segments(tmp_path)
    assert len(names) > 5
    assert names[0].name == segment_name(1)
    # Every segment is named by its first sequence: check it against the records.
    for path in names:
        first = next(rec.scan(path.read_bytes()))[3]
        assert path.name == segment_name(first)
    gone = log.purge(200)
    assert gone == 199
    assert (log.first_seq, log.messages) == (200, 101)
    await log.flush()
    await asyncio.sleep(0)  # the compaction it scheduled
    await log.flush()
    left = segments(tmp_path)
    assert len(left) < len(names)
    assert int(left[0].stem) <= 200  # the segment holding 200 stays
    # Deleting every record of a middle segment removes it too.
    middle = left[1]
    first = int(middle.stem)
    stop = int(left[2].stem)
    for seq in range(first, stop):
        assert log.delete(seq)
    await asyncio.sleep(0)
    await log.flush()
    assert not middle.exists()
    live = [e.seq for e in log.entries()]
    assert live == [s for s in range(200, 301) if not first <= s < stop]
    await log.close()
    log = await FileLog.open(tmp_path, segment_bytes=2048)
    assert [e.seq for e in log.entries()] == live
    msgs = await log.read(live)
    assert [m.seq for m in msgs if m] == live
    await log.close()


async def test_deleted_records_stay_deleted_when_their_tombstones_segment_goes(
    tmp_path: Path,
) -> None:
    """A DEL for an old segment's record lands in a later segment; when that later segment
    dies and is removed, the DEL is carried forward, so the record does not come back."""
    log = await FileLog.open(tmp_path, segment_bytes=1024)
    await append_synced(log, 20, size=50)  # segment A
    assert log.delete(2)  # its DEL goes into whatever segment is current
    await append_synced(log, 60, size=50)  # more segments
    keep = {1, 3}  # A stays alive
    for e in list(log.entries()):
        if e.seq not in keep and e.seq < 60:
            log.delete(e.seq)
    await asyncio.sleep(0)
    await log.flush()
    await asyncio.sleep(0)
    await log.flush()
    await log.close()
    log = await FileLog.open(tmp_path, segment_bytes=1024)
    assert [e.seq for e in log.entries() if e.seq < 60] == [1, 3]
    await log.close()


async def test_a_segment_of_tombstones_only_is_not_rolled_under_its_own_name(
    tmp_path: Path,
) -> None:
    log = await FileLog.open(tmp_path, segment_bytes=256)
    await append_synced(log, 30, size=20)
    for seq in range(1, 31):  # 30 DEL records: several segments' worth
        log.delete(seq)
        await log.flush()
    seqs = await append_synced(log, 30, size=20)
    assert seqs == list(range(31, 61))
    await log.close()
    log = await FileLog.open(tmp_path, segment_bytes=256)
    assert log.recovery.lost_segments == []
    assert [e.seq for e in log.entries()] == seqs
    assert [m.seq for m in await log.read(seqs) if m] == seqs
    await log.close()


async def test_entries_and_seq_at_time(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path)
    times = [100, 200, 200, 150, 300]  # 150 goes back: it is stored as 200
    for t in times:
        log.append("s", None, b"", t)
    assert [e.time for e in log.entries()] == [100, 200, 200, 200, 300]
    assert log.seq_at_time(0) == 1
    assert log.seq_at_time(101) == 2
    assert log.seq_at_time(300) == 5
    assert log.seq_at_time(301) == 6
    log.delete(2)
    assert log.seq_at_time(101) == 3
    assert [e.seq for e in log.entries(3)] == [3, 4, 5]
    assert log.entry(2) is None
    entry = log.entry(4)
    assert entry is not None
    assert (entry.time, entry.subject) == (200, "s")
    await log.close()
    log = await FileLog.open(tmp_path)
    assert [e.time for e in log.entries()] == [100, 200, 200, 300]
    assert log.seq_at_time(201) == 5
    await log.close()


async def test_delete_and_purge_survive_reopen(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path)
    await append_synced(log, 20)
    assert log.delete(5)
    assert not log.delete(5)
    assert not log.delete(99)
    assert log.purge(10) == 8
    assert log.purge(10) == 0
    await log.close()
    log = await FileLog.open(tmp_path)
    assert [e.seq for e in log.entries()] == list(range(10, 21))
    assert (log.first_seq, log.last_seq, log.messages) == (10, 20, 11)
    assert await log.read([5, 9, 10]) == [None, None, (await log.read([10]))[0]]
    await log.close()


@pytest.mark.parametrize("how", ["purge", "delete", "purge-rolled"])
async def test_an_emptied_log_keeps_its_high_water_mark(tmp_path: Path, how: str) -> None:
    log = await FileLog.open(tmp_path, segment_bytes=512 if how == "purge-rolled" else 1 << 20)
    await append_synced(log, 40)
    if how == "delete":
        for seq in range(1, 41):
            log.delete(seq)
    else:
        assert log.purge(log.last_seq + 1) == 40
    assert (log.messages, log.first_seq, log.last_seq) == (0, 41, 40)
    await log.close()
    for _ in range(2):
        log = await FileLog.open(tmp_path, segment_bytes=512)
        assert (log.messages, log.first_seq, log.last_seq) == (0, 41, 40)
        await log.close()
    log = await FileLog.open(tmp_path)
    assert log.append("s", None, b"", now()) == 41
    await log.close()


async def test_cache_is_bounded_and_reads_go_to_disk(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path, cache_bytes=10_000)
    seqs = await append_synced(log, 200, size=500)
    await log.flush()
    assert log.cached(seqs[-1]) is not None
    assert log.cached(seqs[0]) is None
    msgs = await log.read(seqs)
    assert [m.seq for m in msgs if m] == seqs
    await log.close()


async def test_read_checks_the_checksum(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path, cache_bytes=0)
    await append_synced(log, 10, size=100)
    await log.flush()
    seg = segments(tmp_path)[0]
    offsets = [r[1] for r in rec.scan(seg.read_bytes())]
    flip_byte(seg, offsets[4] + 60, 0x55)
    assert (await log.read([4]))[0] is not None
    with pytest.raises(CorruptStore) as e:
        await log.read([4, 5, 6])
    assert e.value.path == str(seg)
    assert e.value.offset == offsets[4]
    await log.close()


# --- group commit, write errors -------------------------------------------------------


class CountingIO(OsFileIO):
    """The real calls, counting the fsyncs."""

    def __init__(self) -> None:
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self.fsyncs += 1
        super().fdatasync(fd)


async def test_interval_fsyncs_on_a_timer_and_never_only_at_close(tmp_path: Path) -> None:
    io = CountingIO()
    log = await FileLog.open(tmp_path / "i", fsync="interval", sync_interval=0.01, io=io)
    await append_synced(log, 3)
    for _ in range(1000):  # the timer fires with no further appends
        if io.fsyncs:
            break
        await asyncio.sleep(0.01)
    assert io.fsyncs >= 1
    await log.close()
    io = CountingIO()
    log = await FileLog.open(tmp_path / "n", fsync="never", io=io)
    for _ in range(5):
        await append_synced(log, 3)
        await asyncio.sleep(0.01)
    assert io.fsyncs == 0
    await log.close()
    assert io.fsyncs == 1  # close syncs whatever the policy


async def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    io = CountingIO()
    log = await FileLog.open(tmp_path, fsync="always", io=io)

    async def publish(i: int) -> int:
        seq = log.append("g.x", None, str(i).encode(), now())
        await log.sync(seq)
        return seq

    seqs = await asyncio.gather(*(publish(i) for i in range(1000)))
    assert sorted(seqs) == list(range(1, 1001))
    assert io.fsyncs < 500, io.fsyncs
    await log.close()


class FailingIO(OsFileIO):
    """Real writes until ``budget`` bytes are spent, then ENOSPC."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def append(self, fd: int, data: bytes) -> None:
        if len(data) > self.budget:
            super().append(fd, data[: self.budget // 2])  # a partial write, then the error
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(data)
        super().append(fd, data)


async def test_a_write_error_fails_the_waiters_and_the_log(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path, io=FailingIO(2000))
    ok = await append_synced(log, 5, size=100)
    seqs = [log.append("e", None, b"z" * 500, now()) for _ in range(10)]
    with pytest.raises(StoreError) as e:
        await log.sync(seqs[-1])
    assert e.value.errno == errno.ENOSPC
    assert e.value.filename == str(tmp_path / segment_name(1))
    assert "No space left" in str(e.value)
    with pytest.raises(StoreError, match="failed earlier"):
        log.append("e", None, b"", now())
    with pytest.raises(StoreError):
        await log.sync(seqs[0])
    await log.close()
    log = await FileLog.open(tmp_path)  # the partial write is a torn tail
    assert [e.seq for e in log.entries()][: len(ok)] == ok
    assert log.recovery.torn_bytes > 0
    await log.close()


# --- power cuts -----------------------------------------------------------------------


class CutAfterWrites(PowerCutIO):
    """Cuts the power right after its ``n``-th write, before anything can fsync it: the
    moment a store that acknowledges too early would lose acknowledged records."""

    def __init__(self, n: int, torn: int) -> None:
        super().__init__()
        self.n = n
        self.torn = torn
        self.lost: dict[str, int] = {}
        self.cut = False

    def append(self, fd: int, data: bytes) -> None:
        super().append(fd, data)
        self.n -= 1
        if self.n == 0:
            self.lost = self.power_cut(torn=self.torn)
            self.cut = True


async def run_until_power_cut(
    tmp_path: Path, policy: str, writes: int, torn: int
) -> tuple[list[int], list[int], CutAfterWrites]:
    """Publishers append and sync until the power is cut (after ``writes`` writes);
    returns what was acknowledged and what a reopened log holds."""
    io = CutAfterWrites(writes, torn)
    log = await FileLog.open(
        tmp_path,
        fsync=policy,  # type: ignore[arg-type]
        sync_interval=0.005,
        segment_bytes=16 << 10,
        io=io,
    )
    acked: list[int] = []
    # Every record longer than what the cut leaves of a torn write: the cut then always
    # drops written, unsynced bytes, however few records the writer thread took in its last
    # batch (on a loaded machine it can take the queue while a publisher is still filling it).
    size = max(40, torn + 60)

    async def publisher() -> None:
        while True:
            try:
                seqs = [log.append("p.x", None, os.urandom(size), now()) for _ in range(20)]
                await log.sync(seqs[-1])
            except StoreError:
                return
            acked.extend(seqs)
            if policy != "always":
                await asyncio.sleep(0.001)  # let the interval timer run now and then

    await asyncio.wait_for(asyncio.gather(publisher(), publisher(), publisher()), 20)
    assert io.cut
    with contextlib.suppress(StoreError):
        await log.close()
    log = await FileLog.open(tmp_path)
    survived = [e.seq for e in log.entries()]
    msgs = await log.read(survived)
    assert all(m is not None for m in msgs)
    await log.close()
    return acked, survived, io


@ONE_LOOP
@pytest.mark.parametrize(("writes", "torn"), [(40, 0), (77, 13), (150, 1000)])
async def test_power_cut_with_fsync_always_loses_nothing_acknowledged(
    tmp_path: Path, writes: int, torn: int
) -> None:
    acked, survived, io = await run_until_power_cut(tmp_path, "always", writes, torn)
    assert sum(io.lost.values()) > 0  # the cut did drop written, unsynced bytes
    assert survived == list(range(1, len(survived) + 1))  # a prefix: no gap, no duplicate
    assert len(acked) > 100
    assert set(acked) <= set(survived)


@ONE_LOOP
@pytest.mark.parametrize("policy", ["interval", "never"])
async def test_power_cut_with_weaker_policies_loses_a_suffix(tmp_path: Path, policy: str) -> None:
    acked, survived, _io = await run_until_power_cut(tmp_path, policy, 150, 5)
    assert survived == list(range(1, len(survived) + 1))
    lost = len(set(acked) - set(survived))
    print(f"fsync={policy}: {len(acked)} acknowledged, {lost} lost to the power cut")
    if policy == "never":
        assert lost > 0  # nothing made it durable but the segment rolls


# --- SIGKILL --------------------------------------------------------------------------


@pytest.mark.parametrize("power_cut", [False, True], ids=["sigkill", "sigkill+power-cut"])
def test_sigkill_loses_nothing_acknowledged(tmp_path: Path, power_cut: bool) -> None:
    """A writer process is SIGKILLed midway through 10,000 fsync="always" appends; every
    sequence it printed (acknowledged) is in the reopened log, in order, exactly once. With
    the power cut too, what no fsync covered is forgotten as well."""
    d = tmp_path / "log"
    journal = tmp_path / "journal"
    args = [sys.executable, str(HERE / "store_proc.py"), "append", str(d), "10000"]
    if power_cut:
        args.append(str(journal))
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    lines = []
    while len(lines) < 3000:
        line = proc.stdout.readline()
        assert line, "the writer ended before it was killed"
        lines.append(line)
    proc.send_signal(signal.SIGKILL)
    lines.extend(proc.stdout.readlines())
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    acked = [int(line) for line in lines if line.endswith("\n")]
    assert acked == list(range(1, len(acked) + 1))
    assert 3000 <= len(acked) < 10_000  # killed midway
    if power_cut:
        PowerCutIO.replay_power_cut(journal, torn=9)

    async def check() -> None:
        log = await FileLog.open(d)
        seqs = [e.seq for e in log.entries()]
        assert seqs == list(range(1, len(seqs) + 1))
        assert len(seqs) >= len(acked)
        msgs = await log.read(seqs)
        assert [m.data for m in msgs if m] == [f"r{s - 1}".encode() for s in seqs]
        assert log.append("after", None, b"", now()) == len(seqs) + 1
        await log.close()

    asyncio.run(check())


# --- damage found at open ---------------------------------------------------------------


async def test_a_torn_tail_is_cut_and_counted(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path)
    await append_synced(log, 10)
    await log.close()
    seg = segments(tmp_path)[-1]
    half = rec.encode_message(11, now(), "t.x", None, b"q" * 100)[:60]
    append_bytes(seg, half)
    size = seg.stat().st_size
    log = await FileLog.open(tmp_path)
    assert log.recovery.torn_bytes == len(half)
    assert log.recovery.lost_segments == []
    assert seg.stat().st_size == size - len(half)
    assert log.last_seq == 10
    assert await append_synced(log, 2) == [11, 12]
    await log.close()
    log = await FileLog.open(tmp_path)
    assert log.recovery.torn_bytes == 0
    assert [e.seq for e in log.entries()] == list(range(1, 13))
    await log.close()


async def test_zeros_at_the_end_are_a_torn_tail(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path)
    await append_synced(log, 3)
    await log.close()
    append_bytes(segments(tmp_path)[-1], bytes(4096))
    log = await FileLog.open(tmp_path)
    assert (log.recovery.torn_bytes, log.messages) == (4096, 3)
    await log.close()


async def test_a_corrupt_middle_segment_is_reported_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = await FileLog.open(tmp_path, segment_bytes=2048)
    await append_synced(log, 200, size=40)
    await log.close()
    segs = segments(tmp_path)
    assert len(segs) >= 4
    victim = segs[len(segs) // 2]
    buf = bytearray(victim.read_bytes())
    records = list(rec.scan(bytes(buf)))
    hit = len(records) // 2
    buf[records[hit][1] + 30] ^= 0x01  # one bit, in the middle of a record
    victim.write_bytes(bytes(buf))
    lost_seqs = {r[3] for r in records[hit:]}
    with caplog.at_level("WARNING", logger="asyncipc.store"):
        log = await FileLog.open(tmp_path, segment_bytes=2048)
    report = log.recovery
    assert [s.name for s in report.lost_segments] == [victim.name]
    lost = report.lost_segments[0]
    assert isinstance(lost, LostSegment)
    assert lost.lost == len(lost_seqs) == report.lost
    assert "checksum" in lost.reason
    assert victim.name in caplog.text
    live = [e.seq for e in log.entries()]
    assert live == [s for s in range(1, 201) if s not in lost_seqs]
    msgs = await log.read(live)
    assert [m.seq for m in msgs if m] == live
    assert log.append("n", None, b"", now()) == 201
    await log.close()
    log = await FileLog.open(tmp_path, segment_bytes=2048)
    assert log.recovery.lost == len(lost_seqs)  # still there, still said
    await log.close()


async def test_garbage_in_the_directory_never_crashes(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path, segment_bytes=1024)
    await append_synced(log, 60, size=30)
    await log.close()
    segs = segments(tmp_path)
    (tmp_path / "notes.txt").write_text("not a segment")
    (tmp_path / "123.seg").write_bytes(b"a badly named segment")
    (tmp_path / "subdir").mkdir()
    inside = int(segs[0].stem) + 1  # an empty segment named inside the first one's range
    (tmp_path / segment_name(inside)).write_bytes(b"")
    (tmp_path / segment_name(10_000)).write_bytes(os.urandom(3000))  # random bytes, last
    log = await FileLog.open(tmp_path, segment_bytes=1024)
    assert not (tmp_path / segment_name(inside)).exists()
    assert [s.name for s in log.recovery.lost_segments] == [segment_name(10_000)]
    assert [e.seq for e in log.entries()] == list(range(1, 61))
    assert [m.seq for m in await log.read(list(range(1, 61))) if m] == list(range(1, 61))
    seq = log.append("after", None, b"x", now())
    assert seq > 10_000  # never inside the damaged segment's name
    await log.sync(seq)
    await log.close()
    log = await FileLog.open(tmp_path, segment_bytes=1024)
    assert [m.data for m in await log.read([seq]) if m] == [b"x"]
    assert (tmp_path / segment_name(10_000)).exists()  # kept for a human to look at
    await log.close()


async def test_an_absurd_length_in_a_segment(tmp_path: Path) -> None:
    log = await FileLog.open(tmp_path, segment_bytes=1024)
    await append_synced(log, 60, size=30)
    await log.close()
    seg = segments(tmp_path)[0]
    buf = bytearray(seg.read_bytes())
    second = list(rec.scan(bytes(buf)))[1][1]
    buf[second + 8 : second + 12] = (0xFFFFFFFF).to_bytes(4, "little")
    seg.write_bytes(bytes(buf))
    log = await FileLog.open(tmp_path, segment_bytes=1024)
    assert [s.name for s in log.recovery.lost_segments] == [seg.name]
    assert "impossible record length" in log.recovery.lost_segments[0].reason
    assert log.entry(1) is not None
    assert log.entry(2) is None
    await log.close()


# --- several processes on one directory ----------------------------------------------


@ONE_LOOP
async def test_shared_writers_in_three_processes(tmp_path: Path) -> None:
    d = tmp_path / "bus"
    per_writer = 300
    reader = await FileLog.open(d, shared=True, segment_bytes=4096)
    with pytest.raises(StoreError, match="append_batch"):
        reader.append("x", None, b"", now())
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "store_proc.py"),
            "shared",
            str(d),
            w,
            str(per_writer),
            "4096",
            stdout=subprocess.PIPE,
            env=child_env(),
        )
        for w in "abc"
    ]
    seen: list[int] = []
    own = await reader.append_batch([("w.r", None, b"r:0", now())])
    deadline = time.monotonic() + 30
    while len(seen) < 3 * per_writer + 1 and time.monotonic() < deadline:
        seen.extend(e.seq for e in await reader.refresh())
        await reader.wait_changed(0.5)
    for p in procs:
        out, _ = await asyncio.wait_for(p.communicate(), 30)
        assert out == b"done\n"
    seen.extend(e.seq for e in await reader.refresh())
    total = 3 * per_writer + 1
    assert seen == list(range(1, total + 1))  # every record once, in order, no gap
    assert own[0] in seen
    msgs = await reader.read(seen)
    by_writer: dict[str, list[int]] = {}
    for m in msgs:
        assert m is not None
        w, i = m.data.decode().split(":")
        by_writer.setdefault(w, []).append(int(i))
        assert m.headers == (None if w == "r" else {"w": w})
    assert by_writer == {**{w: list(range(per_writer)) for w in "abc"}, "r": [0]}
    assert len(segments(d)) > 3  # they rolled segments under the lock

    # Deletes and purges in one process reach another; dead segments go.
    other = await FileLog.open(d, shared=True, segment_bytes=4096)
    assert other.last_seq == total
    assert reader.purge(total - 10) == total - 11
    assert reader.delete(total)
    await reader.flush()
    await asyncio.sleep(0)
    await reader.flush()
    assert len(segments(d)) <= 2
    await other.refresh()
    assert [e.seq for e in other.entries()] == list(range(total - 10, total))
    assert await other.append_batch([("w.o", None, b"o", now())]) == [total + 1]
    await reader.refresh()
    assert reader.last_seq == total + 1
    await other.close()
    await reader.close()
    log = await FileLog.open(d)
    assert [e.seq for e in log.entries()] == [*range(total - 10, total), total + 1]
    await log.close()


async def test_shared_logs_in_one_process_and_wait_changed(tmp_path: Path) -> None:
    a = await FileLog.open(tmp_path, shared=True)
    b = await FileLog.open(tmp_path, shared=True)
    assert await b.refresh() == []
    waiter = asyncio.ensure_future(b.wait_changed(5.0))
    await asyncio.sleep(0.01)
    seqs = await a.append_batch([("s", None, b"1", now()), ("s", {"h": "1"}, b"2", now())])
    assert seqs == [1, 2]
    t0 = time.monotonic()
    await waiter
    assert time.monotonic() - t0 < 4.0
    got = await b.refresh()
    assert [e.seq for e in got] == [1, 2]
    assert [m.data for m in await b.read([1, 2]) if m] == [b"1", b"2"]
    await b.wait_changed(0.01)  # times out quietly
    await a.close()
    await b.close()


async def test_shared_torn_tail_waits_for_the_next_writer(tmp_path: Path) -> None:
    """A writer that died in the middle of a write (it held the lock) leaves a torn
    record: readers stop before it without complaint, the next writer cuts it off."""
    a = await FileLog.open(tmp_path, shared=True)
    b = await FileLog.open(tmp_path, shared=True)
    await a.append_batch([("s", None, b"1", now()), ("s", None, b"2", now())])
    half = rec.encode_message(3, now(), "s", None, b"x" * 50)[:30]
    append_bytes(segments(tmp_path)[-1], half)
    assert [e.seq for e in await b.refresh()] == [1, 2]
    assert await b.refresh() == []
    assert b.recovery.torn_bytes == 0
    assert b.recovery.lost_segments == []
    assert await b.append_batch([("s", None, b"3", now())]) == [3]
    assert b.recovery.torn_bytes == len(half)
    assert [e.seq for e in await a.refresh()] == [1, 2, 3]  # its own appends too
    assert [m.data for m in await a.read([1, 2, 3]) if m] == [b"1", b"2", b"3"]
    await a.close()
    await b.close()
