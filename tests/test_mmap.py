"""mmap:// with real files and processes: broker ring files, durable rings, torn records.

The conformance suite covers the broker transport (``-k mmap``); this file covers files:
who removes them, and what a restarted reader or writer, or a torn record, does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

import asyncipc
from asyncipc.transports._ring.ring import DATA_OFFSET, RECORD_HEADER, record_size
from asyncipc.transports.mmap import open_reader, open_writer

from .test_shm import child, line, reap, until

RECORD = 32  # every test record: a 4-byte number repeated 8 times


def rec(i: int) -> bytes:
    return i.to_bytes(4, "big") * 8


def num(data: bytes) -> int:
    return int.from_bytes(data[:4], "big")


# --- the broker transport's files ----------------------------------------------------------


async def test_ring_files_live_as_long_as_their_link(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir(mode=0o700)
    done = await asyncio.create_subprocess_exec(sys.executable, "-c", "")  # a pid now gone
    await done.wait()
    (d / f"conn-{done.pid}-1.ring").write_bytes(b"left by a dead broker")
    (d / f"conn-{os.getppid()}-1.ring").write_bytes(b"a live process's: kept")
    async with asyncipc.Broker() as broker:
        url = (await broker.listen(f"mmap://{d}?size=64K")).url
        assert sorted(p.name for p in d.iterdir()) == ["broker.sock", f"conn-{os.getppid()}-1.ring"]
        (d / f"conn-{os.getppid()}-1.ring").unlink()
        async with asyncipc.connect(url) as bus:
            (ring,) = d.glob("conn-*.ring")
            assert ring.stat().st_mode & 0o777 == 0o600
            assert ring.stat().st_size == 2 * (64 * 1024 + 4096)
            await bus.flush()
        await until(lambda: not list(d.glob("conn-*.ring")), "the link's file to go")
        proc = await child("echo", url)
        try:
            assert await line(proc) == "ready"
            assert len(list(d.glob("conn-*.ring"))) == 1
            proc.send_signal(signal.SIGKILL)
            await until(lambda: broker.sessions == 0, "the killed client's session to go")
            assert list(d.glob("conn-*.ring")) == []
        finally:
            await reap(proc)
    assert list(d.iterdir()) == []


# --- durable rings ----------------------------------------------------------------------------


async def test_a_restarted_reader_resumes_and_gets_the_record_it_held_again(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "r.ring")
    writer = await open_writer(path, size="64K")
    for i in range(20):
        await writer.send(rec(i))
    proc = await child("file-reader", path, "7", "hold")
    try:
        for i in range(7):
            assert await line(proc) == f"read {i}"
        assert await line(proc) == "holding 7"  # then it dies with record 7 in hand
        assert await proc.wait() == -signal.SIGKILL
    finally:
        await reap(proc)
    reader = await open_reader(path)
    assert [num(await reader.recv()) for _ in range(13)] == list(range(7, 20))
    await writer.send(rec(20))
    assert num(await reader.recv()) == 20
    await reader.aclose()
    await writer.aclose()


async def test_a_reader_closed_while_it_holds_a_record_leaves_it_for_the_next(
    tmp_path: Path,
) -> None:
    """The channel's own held record: closing invalidates it, and does not consume it."""
    path = str(tmp_path / "h.ring")
    writer = await open_writer(path, size="64K")
    for i in range(3):
        await writer.send(rec(i))
    reader = await open_reader(path)
    assert num(await reader.recv()) == 0
    held = await reader.recv_record()
    view = held.view
    with pytest.raises(RuntimeError, match="release the record you hold"):
        await reader.recv()
    await reader.aclose()
    with pytest.raises(asyncipc.RecordReleased):
        view.tobytes()
    reader = await open_reader(path)
    assert [num(await reader.recv()) for _ in range(2)] == [1, 2]
    await reader.aclose()
    await writer.aclose()


async def test_a_killed_writer_restarts_after_its_last_record_while_a_reader_waits(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "w.ring")
    reader = await open_reader(path, size="64K")
    got: list[int] = []

    async def read() -> None:
        while len(got) < 40:
            got.append(num(await reader.recv()))  # asleep between bursts: FIFO doorbell

    reading = asyncio.create_task(read())
    first = await child("file-writer", path, "0", "30", "kill")
    try:
        assert [await line(first) for _ in range(30)] == [f"wrote {i}" for i in range(30)]
        assert await first.wait() == -signal.SIGKILL
    finally:
        await reap(first)
    second = await child("file-writer", path, "30", "10")
    try:
        assert await second.wait() == 0
    finally:
        await reap(second)
    await asyncio.wait_for(reading, 10)
    assert got == list(range(40))
    assert reader.skipped_records == 0
    await reader.aclose()


@pytest.mark.parametrize("where", ["payload", "header"])
async def test_a_torn_record_is_skipped_never_delivered(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "t.ring")
    writer = await open_writer(path, size="64K")
    for i in range(10):
        await writer.send(rec(i))
    # What a machine crash can leave: record 5's bytes only partly on disk.
    at = DATA_OFFSET + 5 * record_size(RECORD)
    fd = os.open(path, os.O_RDWR)
    if where == "payload":
        os.pwrite(fd, bytes(RECORD // 2), at + RECORD_HEADER + RECORD // 2)
    else:
        os.pwrite(fd, b"\xff\xff\x00\x00", at)  # its length
    os.close(fd)
    reader = await open_reader(path)
    expected = [0, 1, 2, 3, 4, 6, 7, 8, 9] if where == "payload" else [0, 1, 2, 3, 4]
    got = [num(await reader.recv()) for _ in expected]
    assert got == expected
    # A bad header's length cannot be trusted: everything up to the tail goes with it.
    nxt = asyncio.create_task(reader.recv())
    await until(lambda: reader.skipped_records == 1, "the torn record to be skipped")
    await writer.send(rec(10))  # and the ring goes on
    assert num(await nxt) == 10
    problem = "fails its CRC-32" if where == "payload" else "header check does not match"
    assert problem in caplog.text
    await reader.aclose()
    await writer.aclose()


async def test_a_writer_killed_mid_record_leaves_a_torn_record_that_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "k.ring")
    proc = await child("file-torn", path)
    try:
        assert await line(proc) == "torn"
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        await reap(proc)
    writer = await open_writer(path)  # restarted: continues after the torn record
    await writer.send(rec(2))
    reader = await open_reader(path)
    assert [num(await reader.recv()) for _ in range(2)] == [0, 2]
    assert reader.skipped_records == 1
    assert "payload of 1000 bytes fails its CRC-32" in caplog.text
    await reader.aclose()
    await writer.aclose()


async def test_one_writer_and_one_reader_per_ring_file(tmp_path: Path) -> None:
    path = str(tmp_path / "one.ring")
    writer = await open_writer(path, size="64K")
    reader = await open_reader(path)
    with pytest.raises(asyncipc.ConfigurationError, match="already has a live writer"):
        await open_writer(path)
    with pytest.raises(asyncipc.ConfigurationError, match="already has a live reader"):
        await open_reader(path)
    with pytest.raises(RuntimeError, match="only writes"):
        await writer.recv()
    with pytest.raises(RuntimeError, match="only reads"):
        await reader.send(b"")
    await writer.aclose()
    await reader.aclose()
    again = await open_writer(path)  # the lock went with the closed writer
    await again.aclose()


async def test_files_that_are_not_ring_files_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_bytes(b"not a ring" * 1000)
    with pytest.raises(asyncipc.CorruptRing, match="bad magic"):
        await open_reader(text)
    (tmp_path / "tiny").write_bytes(b"x")
    with pytest.raises(asyncipc.ConfigurationError, match="is not a ring file"):
        await open_reader(tmp_path / "tiny")
    if os.getuid() == 0:
        theirs = tmp_path / "theirs.ring"
        w = await open_writer(theirs, size="64K")
        await w.aclose()
        os.chown(theirs, 54321, 54321)
        with pytest.raises(asyncipc.ConfigurationError, match="belongs to uid 54321"):
            await open_reader(theirs)
    os.chmod(tmp_path, 0o755)
    async with asyncipc.Broker() as broker:
        with pytest.raises(asyncipc.ConfigurationError, match="lets other users in"):
            await broker.listen(f"mmap://{tmp_path}")


async def test_a_full_ring_file_holds_the_writer_until_the_reader_frees_space(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "full.ring")
    writer = await open_writer(path, size="64K")
    reader = await open_reader(path)
    big = bytes(30_000)
    await writer.send(big)
    await writer.send(big)
    third = asyncio.create_task(writer.send(big))  # does not fit: waits on path.space
    await until(lambda: reader._rx is not None and reader._rx.writer_waiting, "the wait")
    assert not third.done()
    assert await reader.recv() == big  # frees space: rings the writer's FIFO
    await asyncio.wait_for(third, 5)
    assert [len(await reader.recv()) for _ in range(2)] == [30_000, 30_000]
    await writer.aclose()
    await reader.aclose()
