"""file:///dir with real processes and real files: live tailing, several writers, request/reply,
streams replayed after every process exited, the streams' host taking over, damaged files.

Child programs are in file_child.py; each prints what it saw, one fact a line.
"""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import asyncipc
from asyncipc.streams.store.record import encode_message

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHILD = [sys.executable, str(HERE / "file_child.py")]
GUARD = 30.0  # seconds: only a guard against a hang, never a measurement


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCIPC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


class Child:
    """``file_child.py MODE DIR ARGS``: its stdout read line by line by a thread, stderr
    kept for the failure message (and for the warnings some tests look for)."""

    def __init__(self, mode: str, directory: Path | str, *args: object) -> None:
        self.mode = mode
        self.proc = subprocess.Popen(
            [*CHILD, mode, str(directory), *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            cwd=ROOT,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout as out:
            for line in out:
                self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr as err:
            self._stderr.extend(err)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def line(self) -> str:
        try:
            got = self._lines.get(timeout=GUARD)
        except queue.Empty:
            pytest.fail(f"{self.mode}: no output for {GUARD} s; stderr: {self.stderr}")
        if got is None:
            self.proc.wait(GUARD)
            pytest.fail(f"{self.mode} exited ({self.proc.returncode}); stderr: {self.stderr}")
        return got

    def expect(self, text: str) -> None:
        got = self.line()
        assert got == text, f"{self.mode}: {got!r}, not {text!r}; stderr: {self.stderr}"

    def say(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to close anything."""
        self.proc.kill()
        self.proc.wait(GUARD)
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        for reader in self._readers:
            reader.join(GUARD)

    def finish(self) -> list[str]:
        """Close its stdin, wait for its exit (status 0), return the lines not read yet."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(GUARD)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.mode} did not exit; stderr: {self.stderr}")
        for reader in self._readers:
            reader.join(GUARD)
        out: list[str] = []
        while (got := self._lines.get(timeout=GUARD)) is not None:
            out.append(got)
        assert self.proc.returncode == 0, f"{self.mode}: exit {self.proc.returncode}: {self.stderr}"
        return out


def run(mode: str, directory: Path | str, *args: object) -> tuple[list[str], str]:
    """Run a child to its end: its lines and its stderr."""
    child = Child(mode, directory, *args)
    lines = child.finish()
    return lines, child.stderr


# --- pub/sub between processes --------------------------------------------------------------


def test_a_tailer_in_another_process_gets_every_message_in_order(tmp_path: Path) -> None:
    tailer = Child("sub", tmp_path, "t.>", 1000)
    tailer.expect("ready")
    lines, _ = run("pub", tmp_path, "t.x", 1000, "A")
    assert lines == ["done"]
    assert tailer.finish() == [f"A {i}" for i in range(1000)]


def test_several_writer_processes_at_once_lose_and_repeat_nothing(tmp_path: Path) -> None:
    tailer = Child("sub", tmp_path, "w.>", 3000)
    tailer.expect("ready")
    writers = [Child("pub", tmp_path, f"w.{tag}", 1000, tag) for tag in "ABC"]
    for writer in writers:
        assert writer.finish() == ["done"]
    got = tailer.finish()
    assert len(got) == 3000
    for tag in "ABC":
        # Each writer's messages in its own order, all of them, once each.
        assert [g for g in got if g.startswith(tag + " ")] == [f"{tag} {i}" for i in range(1000)]


def test_large_messages_cross_processes_whole(tmp_path: Path) -> None:
    tailer = Child("sub", tmp_path, "big.>", 3)
    tailer.expect("ready")
    lines, _ = run("pub", tmp_path, "big.x", 3, "L", 6 << 20)  # 6 MiB each
    assert lines == ["done"]
    assert tailer.finish() == [f"{f'L {i}'.ljust(20, '.')}... ({6 << 20} bytes)" for i in range(3)]


def test_a_new_process_hears_only_what_comes_after_it_opened(tmp_path: Path) -> None:
    assert run("pub", tmp_path, "old.x", 5, "old")[0] == ["done"]
    tailer = Child("sub", tmp_path, "old.>", 1)
    tailer.expect("ready")
    assert run("pub", tmp_path, "old.x", 1, "new")[0] == ["done"]
    assert tailer.finish() == ["new 0"]


async def test_a_slow_subscriber_leaves_the_backlog_in_the_log(tmp_path: Path) -> None:
    """overflow="block" across processes: the publisher is not slowed (it is elsewhere),
    and this process does not buffer the backlog either: its tailer stops reading while
    the subscriber is behind, and the log holds the rest on disk."""
    from asyncipc.transports.file import file_bus

    url = f"file://{tmp_path}"
    async with asyncipc.connect(url) as bus, bus.subscribe("slow.x", max_pending=10) as sub:
        await bus.flush()
        joined = await file_bus(url)
        assert joined is not None
        lines, _ = await asyncio.to_thread(run, "pub", tmp_path, "slow.x", 20_000, "s", 1000)
        assert lines == ["done"]  # 20 MB written while nobody here reads
        await asyncio.sleep(0.5)
        held = joined.broker.buffered
        assert held <= joined.broker.options.high_water + (1 << 20), held
        assert joined.relay.tailed < 20_000  # the rest waits in the log
        for i in range(20_000):
            msg = await sub.next_msg(timeout=10)
            assert msg.data.startswith(f"s {i}.".encode())


def test_request_reply_between_processes_and_a_request_nobody_answers(tmp_path: Path) -> None:
    server = Child("serve", tmp_path, "price.quote")
    server.expect("ready")
    assert run("request", tmp_path, "price.quote", "sku-1", 5)[0] == ["re: sku-1"]
    # Nobody can say at once that nobody listens (another process may answer later):
    # the request times out, it does not raise NoResponders.
    lines, _ = run("request", tmp_path, "nobody.here", "x", 0.5)
    assert lines == ["RequestTimeout no reply to request on 'nobody.here' within 0.5 s"]
    server.finish()


# --- what file:// refuses --------------------------------------------------------------------


async def test_queue_groups_are_refused_with_a_pointer_to_stream_consumers(tmp_path: Path) -> None:
    async with asyncipc.connect(f"file://{tmp_path}") as bus:
        with pytest.raises(asyncipc.ConfigurationError, match="stream consumer"):
            bus.subscribe("jobs.>", queue="workers")
        with pytest.raises(asyncipc.ConfigurationError, match="queue group 'workers'"):

            @bus.handler("jobs.run", queue="workers")
            async def run(msg: asyncipc.Message) -> bytes:
                return b""

        async with bus.subscribe("jobs.>") as sub:  # the bus is still fine
            await bus.publish("jobs.a", b"1")
            assert (await sub.next_msg(timeout=5)).data == b"1"


async def test_a_message_the_log_cannot_hold_is_dropped_alone_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from asyncipc.transports.file import file_bus

    url = f"file://{tmp_path}"
    async with asyncipc.connect(url) as bus:
        joined = await file_bus(url)
        assert joined is not None
        await bus.publish("h.big", b"x", headers={"h": "v" * (2 << 20)})  # 2 MiB of headers
        await bus.publish("h.ok", b"fine")
        await bus.flush()
        await joined.relay.flush()
        assert (joined.relay.dropped, joined.relay.appended) == (1, 1)
    assert "a message on h.big cannot be written" in caplog.text


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("file://elsewhere/tmp/x", "not host 'elsewhere'"),
        ("file:///", "name a directory"),
        ("file:///tmp/x?fsync=sometimes", "fsync must be always, interval or never"),
        ("file:///tmp/x?max_bytes=lots", "max_bytes is a size"),
        ("file:///tmp/x?max_age=forever", "max_age is seconds"),
        ("file:///tmp/x?colour=blue", "unknown option(s) colour"),
    ],
)
async def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(asyncipc.ConfigurationError) as caught:
        await asyncipc.connect(url)
    assert says in str(caught.value)


async def test_a_directory_that_cannot_be_one_is_a_clear_connect_error(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("not a directory")
    with pytest.raises(asyncipc.ConnectError, match=r"cannot use .*plain-file/bus"):
        await asyncipc.connect(f"file://{tmp_path}/plain-file")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "bus").write_text("a file where the log directory goes")
    with pytest.raises(asyncipc.ConnectError, match="bus"):
        await asyncipc.connect(f"file://{tmp_path}/d")


async def test_two_buses_of_one_loop_share_one_broker_and_options_must_agree(
    tmp_path: Path,
) -> None:
    url = f"file://{tmp_path}"
    async with asyncipc.connect(url) as a, asyncipc.connect(url) as b:
        async with b.subscribe("x") as sub:
            await b.flush()
            await a.publish("x", b"local")
            assert (await sub.next_msg(timeout=5)).data == b"local"
        with pytest.raises(asyncipc.ConfigurationError, match="other options"):
            await asyncipc.connect(url + "?fsync=always")


# --- streams ----------------------------------------------------------------------------------


def test_streams_are_replayed_after_every_process_has_exited(tmp_path: Path) -> None:
    lines, _ = run("stream-pub", tmp_path, "ORD", 10)
    assert lines == [*map(str, range(1, 11)), "done"]  # acknowledged, then the process exited
    first, _ = run("consume", tmp_path, "ORD", "billing", 5)
    assert first == [f"{i + 1} m {i}" for i in range(5)] + ["done"]
    rest, _ = run("consume", tmp_path, "ORD", "billing", 5)
    assert rest == [f"{i + 1} m {i}" for i in range(5, 10)] + ["done"]
    assert (tmp_path / "streams" / "ORD" / "consumers" / "billing.json").exists()


def test_streams_through_a_host_process_and_its_take_over(tmp_path: Path) -> None:
    host = Child("host", tmp_path)
    host.expect("hosting")
    standby = Child("host", tmp_path)
    standby.expect("not hosting")
    # Neither of these hosts the streams: requests, acks and deliveries go through the log.
    assert run("stream-pub", tmp_path, "JOBS", 6)[0] == [*map(str, range(1, 7)), "done"]
    assert run("consume", tmp_path, "JOBS", "w", 3)[0] == ["1 m 0", "2 m 1", "3 m 2", "done"]
    host.finish()  # the host leaves: the stand-by takes the lock and loads the streams
    _wait_hosting(standby)
    assert run("consume", tmp_path, "JOBS", "w", 3)[0] == ["4 m 3", "5 m 4", "6 m 5", "done"]
    standby.finish()


def test_a_host_killed_outright_is_replaced_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
) -> None:
    host = Child("host", tmp_path)
    host.expect("hosting")
    standby = Child("host", tmp_path)
    standby.expect("not hosting")
    assert run("stream-pub", tmp_path, "KILL", 4)[0] == ["1", "2", "3", "4", "done"]
    host.kill()  # the kernel drops its lock; nothing was closed, nothing saved on exit
    _wait_hosting(standby)
    lines, _ = run("consume", tmp_path, "KILL", "w", 4)
    assert lines == [f"{i + 1} m {i}" for i in range(4)] + ["done"]
    standby.finish()


def _wait_hosting(child: Child) -> None:
    deadline = time.monotonic() + GUARD
    while True:
        child.say("status")
        if child.line() == "hosting":
            return
        assert time.monotonic() < deadline, "the stand-by never took over"
        time.sleep(0.1)


async def test_what_no_host_captured_is_captured_by_the_next_one(tmp_path: Path) -> None:
    """A broker joined to the directory with a store of its own never hosts its streams:
    what it publishes while no process runs is in the bus log only, and the next process
    to host captures it from there, after what the last host captured."""
    lines, _ = await asyncio.to_thread(run, "stream-pub", tmp_path, "LATE", 2)
    assert lines == ["1", "2", "done"]
    async with asyncipc.Broker(store=str(tmp_path / "own-store")) as broker:
        await broker.listen(f"file://{tmp_path}")
        await broker.listen("memory://joined")
        async with asyncipc.connect("memory://joined") as bus:
            for i in range(2, 5):
                await bus.publish(f"LATE.{i}", f"m {i}".encode())
    lines, _ = await asyncio.to_thread(run, "consume", tmp_path, "LATE", "c", 5)
    assert lines == [f"{i + 1} m {i}" for i in range(5)] + ["done"]


async def test_a_broker_joins_a_directory_once_at_a_time(tmp_path: Path) -> None:
    """A second ``listen()`` of a directory this broker is joined to is refused (by its
    real path, here through a symlink); once the first is closed, it may join again. Kept
    on the broker itself, which the compiled build cannot weakly reference."""
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    async with asyncipc.Broker() as broker:
        first = await broker.listen(f"file://{tmp_path / 'd'}")
        with pytest.raises(asyncipc.ConfigurationError, match=r"joined to .* already"):
            await broker.listen(f"file://{tmp_path / 'link'}")
        async with asyncipc.Broker() as other:  # another broker is not this one
            await other.listen(f"file://{tmp_path / 'd'}")
        await first.aclose()
        await first.wait_closed()
        await broker.listen(f"file://{tmp_path / 'link'}")


def test_the_bus_log_is_trimmed_to_max_bytes_by_whole_segments(tmp_path: Path) -> None:
    url_dir = f"{tmp_path}?max_bytes=1M"
    lines, _ = run("pub", url_dir, "big.x", 4000, "b", 1000)  # about 4 MB
    assert lines == ["done"]
    segments = list((tmp_path / "bus").glob("*.seg"))
    total = sum(s.stat().st_size for s in segments)
    assert len(segments) > 1
    assert total < 1.5 * (1 << 20), f"{total} bytes in {len(segments)} segments"


# --- damage -------------------------------------------------------------------------------------


def _last_segment(log_dir: Path) -> Path:
    return sorted(log_dir.glob("*.seg"))[-1]


def test_a_torn_record_at_the_end_of_the_bus_log_is_cut_and_counted(tmp_path: Path) -> None:
    assert run("pub", tmp_path, "t.x", 3, "before")[0] == ["done"]
    segment = _last_segment(tmp_path / "bus")
    size = segment.stat().st_size
    record = encode_message(4, time.time_ns(), "t.x", None, b"half of me" * 10)
    with open(segment, "ab") as f:  # a writer that died in the middle of its write
        f.write(record[: len(record) // 2])
    tailer = Child("sub", tmp_path, "t.>", 2)
    tailer.expect("ready")
    assert segment.stat().st_size == size  # cut back to the last whole record
    assert f"cut a torn write of {len(record) // 2} bytes" in tailer.stderr
    assert run("pub", tmp_path, "t.x", 2, "after")[0] == ["done"]
    assert tailer.finish() == ["after 0", "after 1"]


def test_garbage_in_the_directory_is_named_and_nothing_else_is_lost(tmp_path: Path) -> None:
    assert run("stream-pub", tmp_path, "KEEP", 3)[0] == ["1", "2", "3", "done"]
    (tmp_path / "README.txt").write_text("a file of the user's: left alone")
    (tmp_path / "bus" / "notes.txt").write_text("not a segment")
    (tmp_path / "streams" / "junk").mkdir()  # a stream directory with no stream.json
    tailer = Child("sub", tmp_path, "g.>", 1)
    tailer.expect("ready")
    assert run("pub", tmp_path, "g.x", 1, "still")[0] == ["done"]
    assert tailer.finish() == ["still 0"]
    assert "ignoring 'notes.txt', which is not a segment file" in tailer.stderr
    assert "stream junk skipped" in tailer.stderr
    lines, _ = run("consume", tmp_path, "KEEP", "c", 3)
    assert lines == ["1 m 0", "2 m 1", "3 m 2", "done"]


def test_a_corrupt_segment_is_reported_and_the_rest_stays_readable(tmp_path: Path) -> None:
    assert run("stream-pub", tmp_path, "HALF", 10)[0] == [*map(str, range(1, 11)), "done"]
    segment = _last_segment(tmp_path / "streams" / "HALF" / "log")
    data = bytearray(segment.read_bytes())
    # Damage a byte of the 6th record's payload: its checksum no longer matches.
    offsets = [i for i in range(len(data) - 2) if data[i : i + 2] == b"\xa5\x1c"]
    data[offsets[5] + 40] ^= 0xFF
    segment.write_bytes(bytes(data))
    lines, stderr = run("consume", tmp_path, "HALF", "c", 5)
    assert lines == [f"{i + 1} m {i}" for i in range(5)] + ["done"]
    assert "checksum mismatch" in stderr
    assert "stream HALF recovered 5 records" in stderr
    # The bus log likewise: a damaged bus segment is reported, the bus carries on.
    bus_segment = _last_segment(tmp_path / "bus")
    raw = bytearray(bus_segment.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bus_segment.write_bytes(bytes(raw))
    tailer = Child("sub", tmp_path, "z.>", 1)
    tailer.expect("ready")
    assert run("pub", tmp_path, "z.x", 1, "alive")[0] == ["done"]
    assert tailer.finish() == ["alive 0"]
    assert "is damaged" in tailer.stderr
