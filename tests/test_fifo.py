"""Named pipes (``fifo:///path``): the rendezvous, the private pairs, stale and foreign
files, and bad input from clients, with real processes where it matters.

The conformance suite runs over ``fifo://`` too, in this process and in a broker process
(conftest.py). Clients here are ``tests/pipe_child.py`` processes, or the handshake of
docs/transports.md done by hand with ``os`` calls, so each step can be cut short.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import asyncipc
from asyncipc.protocol import Err, ErrorCode, FrameDecoder
from asyncipc.testing import BrokerProcess
from asyncipc.transports.fifo import REQUEST

HERE = Path(__file__).parent
CHILD = str(HERE / "pipe_child.py")
NOBODY = 65534

Env = tuple[asyncipc.Broker, asyncipc.Bus, str]


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    """A broker on a FIFO in tmp_path, and a bus of ours on it (over memory://)."""
    async with asyncipc.Broker(handshake_timeout=0.5) as broker:
        path = str(tmp_path / "b.fifo")
        await broker.listen(f"fifo://{path}")
        url = (await broker.listen(f"memory://fifo{os.urandom(4).hex()}")).url
        async with asyncipc.connect(url) as bus:
            yield broker, bus, path


def entries(path: str) -> list[str]:
    return sorted(os.listdir(path + ".d"))


async def readable(fd: int) -> bytes:
    """One read from ``fd`` once the kernel says it is readable."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await asyncio.wait_for(fut, 10)
    finally:
        loop.remove_reader(fd)
    return os.read(fd, 65536)


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait (bounded, not timed) for the broker to act on something it reads."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


def make_pair(path: str) -> tuple[str, str, str]:
    """Step 1 of the handshake: a client's id and its two FIFOs."""
    cid = os.urandom(16).hex()
    up, down = f"{path}.d/{cid}.up", f"{path}.d/{cid}.down"
    os.mkfifo(up, 0o600)
    os.mkfifo(down, 0o600)
    return cid, up, down


def request(path: str, cid: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.write(fd, REQUEST % cid.encode())
    os.close(fd)


async def run_child(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, CHILD, *args, stdout=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


async def serve_ready(bus: asyncipc.Bus) -> asyncio.Queue[int]:
    pids: asyncio.Queue[int] = asyncio.Queue()

    async def ready(msg: asyncipc.Message) -> bytes:
        pids.put_nowait(int(msg.data))
        return b"ok"

    bus.serve("ready", ready)
    await bus.flush()
    return pids


# --- unrelated processes through one rendezvous -----------------------------------------


async def test_unrelated_processes_share_work_through_the_rendezvous(env: Env) -> None:
    broker, bus, path = env
    ready = await serve_ready(bus)
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, CHILD, "worker", "0", f"fifo://{path}")
        for _ in range(3)
    ]
    pids = {await asyncio.wait_for(ready.get(), 30) for _ in procs}
    assert pids == {p.pid for p in procs}
    fifo_peers = [p for p in broker.peers if p.transport == "fifo"]
    assert len(fifo_peers) == 3
    assert {p.uid for p in fifo_peers} == {os.geteuid()}  # the owner of their FIFOs
    # Connected clients' FIFOs are already gone from the directory: both ends hold them.
    assert entries(path) == []

    replies = await asyncio.gather(
        *(bus.request("work", f"job {i}".encode(), timeout=10) for i in range(30))
    )
    assert Counter(json.loads(r.data)["pid"] for r in replies) == {pid: 10 for pid in pids}

    for pid in pids:
        assert (await bus.request(f"ctl.{pid}", b"quit", timeout=10)).data == b"bye"
    assert [await p.wait() for p in procs] == [0, 0, 0]
    await until(lambda: broker.sessions == 1, "the clients' sessions end")


async def test_files_are_private_and_removed_on_close(tmp_path: Path) -> None:
    path = str(tmp_path / "b.fifo")
    async with asyncipc.Broker() as broker:
        await broker.listen(f"fifo://{path}")
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert stat.S_ISFIFO(os.lstat(path).st_mode)
        assert stat.S_IMODE(os.lstat(path + ".d").st_mode) == 0o700
        async with asyncipc.connect(f"fifo://{path}") as bus:
            await bus.flush()
            assert bus.peer.transport == "fifo"
        make_pair(path)  # a pair the broker never heard of
    assert os.listdir(tmp_path) == [], "the FIFO, its directory or a pair was left behind"


async def test_a_live_broker_is_left_alone(env: Env) -> None:
    _, _, path = env
    async with asyncipc.Broker() as other:
        with pytest.raises(asyncipc.ConfigurationError, match="is in use: a live broker"):
            await other.listen(f"fifo://{path}")
    async with asyncipc.connect(f"fifo://{path}") as bus:
        await bus.flush()  # the first broker still serves


async def test_stale_fifos_of_a_dead_broker_are_cleaned(tmp_path: Path) -> None:
    path = str(tmp_path / "b.fifo")
    dead = BrokerProcess([f"fifo://{path}"])  # `asyncipc broker`, ready
    _, up, _ = make_pair(path)  # a client that never got to ask
    dead.proc.kill()
    assert dead.stop() == -signal.SIGKILL
    assert os.path.exists(path), "the dead broker left its FIFO"
    assert os.path.exists(up), "and a client's pair"

    async with asyncipc.Broker() as broker:
        await broker.listen(f"fifo://{path}")
        assert entries(path) == []
        async with asyncipc.connect(f"fifo://{path}") as bus:
            await bus.flush()
    assert os.listdir(tmp_path) == []


# --- what the broker refuses to touch --------------------------------------------------


async def test_a_path_that_is_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "b.fifo"
    path.write_bytes(b"precious")
    async with asyncipc.Broker() as broker:
        with pytest.raises(
            asyncipc.ConfigurationError,
            match=rf"refusing to use {path}: it is a regular file, not a FIFO",
        ):
            await broker.listen(f"fifo://{path}")
    with pytest.raises(asyncipc.ConnectError, match="is a regular file, not a FIFO"):
        await asyncipc.connect(f"fifo://{path}")
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["b.fifo"]


async def test_a_fifo_of_another_user(tmp_path: Path) -> None:
    path = tmp_path / "b.fifo"
    os.mkfifo(path, 0o600)
    os.chown(path, NOBODY, NOBODY)
    async with asyncipc.Broker() as broker:
        with pytest.raises(
            asyncipc.ConfigurationError,
            match=rf"refusing to use {path}: it belongs to uid {NOBODY}",
        ):
            await broker.listen(f"fifo://{path}")
    assert os.lstat(path).st_uid == NOBODY
    assert os.listdir(tmp_path) == ["b.fifo"]


async def test_a_directory_of_another_user(tmp_path: Path) -> None:
    path = tmp_path / "b.fifo"
    os.mkdir(f"{path}.d", 0o700)
    os.mkfifo(f"{path}.d/{'0' * 32}.up", 0o600)
    os.chown(f"{path}.d", NOBODY, NOBODY)
    async with asyncipc.Broker() as broker:
        with pytest.raises(
            asyncipc.ConfigurationError,
            match=rf"refusing to use {path}.d: the directory belongs to uid {NOBODY}",
        ):
            await broker.listen(f"fifo://{path}")
    assert os.listdir(f"{path}.d") == [f"{'0' * 32}.up"]
    assert not path.exists()


def foreign_pair_half(d: Path) -> None:
    os.mkfifo(d / f"{'1' * 32}.up")
    os.chown(d / f"{'1' * 32}.up", NOBODY, 0)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda d: (d / "notes.txt").write_text("mine"), "notes.txt is a regular file"),
        (lambda d: os.mkfifo(d / "other.fifo"), "other.fifo is a FIFO with a name asyncipc"),
        (foreign_pair_half, f"belongs to uid {NOBODY}"),
    ],
)
async def test_something_foreign_in_the_directory(
    tmp_path: Path, make: Callable[[Path], object], problem: str
) -> None:
    path = tmp_path / "b.fifo"
    d = Path(f"{path}.d")
    d.mkdir(mode=0o700)
    make(d)
    before = sorted(os.listdir(d))
    async with asyncipc.Broker() as broker:
        with pytest.raises(asyncipc.ConfigurationError, match=problem):
            await broker.listen(f"fifo://{path}")
    assert sorted(os.listdir(d)) == before


async def test_a_directory_that_is_a_symlink(tmp_path: Path) -> None:
    path = tmp_path / "b.fifo"
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", f"{path}.d")
    async with asyncipc.Broker() as broker:
        with pytest.raises(asyncipc.ConfigurationError, match="it is a symbolic link"):
            await broker.listen(f"fifo://{path}")


async def test_connect_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "b.fifo"
    with pytest.raises(asyncipc.ConnectError, match=rf"no {path} \(is a broker listening\?\)"):
        await asyncipc.connect(f"fifo://{path}")
    os.mkfifo(path, 0o600)  # what a broker killed outright leaves
    os.mkdir(f"{path}.d", 0o755)
    with pytest.raises(asyncipc.ConnectError, match=r"b.fifo.d is not a private directory"):
        await asyncipc.connect(f"fifo://{path}")
    os.chmod(f"{path}.d", 0o700)
    with pytest.raises(asyncipc.ConnectError, match="no broker reads"):
        await asyncipc.connect(f"fifo://{path}")
    assert os.listdir(f"{path}.d") == [], "a failed connect left its FIFOs"
    with pytest.raises(asyncipc.ConfigurationError, match="has no FIFO path"):
        await asyncipc.connect("fifo://")


# --- bad input ------------------------------------------------------------------------


async def assert_others_carry_on(path: str) -> None:
    async with (
        asyncipc.connect(f"fifo://{path}") as a,
        asyncipc.connect(f"fifo://{path}") as b,
        b.subscribe("health") as sub,
    ):
        await a.publish("health", b"still here")
        assert (await sub.next_msg(timeout=10)).data == b"still here"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("garbage", "bad preamble"), ("badframe", "unknown frame op 238")],
)
async def test_a_client_writing_garbage_is_cut_off_alone(
    env: Env, mode: str, expected: str
) -> None:
    broker, _, path = env
    code, out = await run_child("raw", mode, path)
    assert code == 0
    [err] = [f for f in FrameDecoder().feed(bytes.fromhex(out.strip())) if isinstance(f, Err)]
    assert err.code == ErrorCode.PROTOCOL
    assert expected in err.message
    await assert_others_carry_on(path)
    await until(lambda: broker.sessions == 1, "the offender's session ends")


async def test_a_client_dying_mid_frame(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    broker, bus, path = env
    async with bus.subscribe("partial.>") as watch:
        code, _ = await run_child("raw", "vanish", path)
        assert code == 0
        await until(lambda: any("mid-frame" in r.getMessage() for r in caplog.records), "log")
        await until(lambda: broker.sessions == 1, "its session ends")
        await bus.flush()
        assert watch.pending == 0, "half a message is never delivered"
    await assert_others_carry_on(path)
    assert entries(path) == []


async def test_a_clients_last_frames_are_delivered(env: Env) -> None:
    """It wrote a handshake and 100 PUBs and exited, likely before the broker's end of
    ``down`` was even set up: those frames are still read and routed."""
    _, bus, path = env
    async with bus.subscribe("last.words") as sub:
        code, _ = await run_child("raw", "lastwords", path)
        assert code == 0
        got = [(await sub.next_msg(timeout=10)).data for _ in range(100)]
    assert got == [b"%d" % i for i in range(100)]


async def test_garbage_on_the_rendezvous_is_ignored(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, path = env
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.write(fd, b"hello broker\nAIPC-FIFO/1 not-hex\n")
    os.write(fd, os.urandom(5000).replace(b"\n", b"."))  # and no newline at all
    os.close(fd)
    # A genuine request right behind the junk still gets through.
    await assert_others_carry_on(path)
    messages = [r.getMessage() for r in caplog.records]
    assert any("malformed request line(s)" in m for m in messages)


async def test_a_client_that_dies_before_reading_the_answer(env: Env) -> None:
    """It made its pair and asked, but never opened ``down``: the broker finds no reader
    there, removes the pair, and carries on."""
    _, _, path = env
    cid, up, down = make_pair(path)
    request(path, cid)
    await until(lambda: not os.path.exists(up) and not os.path.exists(down), "pair removed")
    await assert_others_carry_on(path)


async def test_a_client_that_dies_after_the_answer(env: Env) -> None:
    """It read OK and vanished before opening ``up``: the handshake time-out ends the
    broker's half-made link and the pair is removed."""
    broker, _, path = env
    cid, up, down = make_pair(path)
    rfd = os.open(down, os.O_RDONLY | os.O_NONBLOCK)
    request(path, cid)
    assert await readable(rfd) == b"OK\n"
    os.close(rfd)
    await until(lambda: not os.path.exists(up), "pair removed after the handshake time-out")
    await until(lambda: broker.sessions == 1, "the half-made session ends")
    await assert_others_carry_on(path)


async def test_pairs_abandoned_before_asking_are_swept(tmp_path: Path) -> None:
    path = str(tmp_path / "b.fifo")
    async with asyncipc.Broker() as broker:
        await broker.listen(f"fifo://{path}")
        _, old_up, old_down = make_pair(path)
        _, new_up, new_down = make_pair(path)
        for name in (old_up, old_down):
            os.utime(name, (0, 0))  # abandoned long ago
        async with asyncipc.connect(f"fifo://{path}") as bus:  # a request triggers a sweep
            await bus.flush()
        assert entries(path) == sorted(os.path.basename(n) for n in (new_up, new_down))
